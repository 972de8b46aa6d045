"""The CHT's JavaScript, run in V8 (mini-racer): outbound ``relevant_to``/``expr`` and task rules.

Configurations written for a real CHT carry JS expressions and cht-conf task definitions; running
them in a real JS engine (rather than re-implementing a subset in Python) is what lets them run
unchanged. The prelude below is ours: a small object-path, Sentinel's mapping loop and a
declarative-task emitter following cht-conf's semantics (see ``tasks.py``).

A ``JsRuntime`` owns one V8 isolate; call :meth:`close` when done (mini-racer keeps a thread).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import py_mini_racer
from py_mini_racer import MiniRacer, init_mini_racer

from cht_interop.kit.arenas import release_loaded_pages

_EVAL_TIMEOUT_SECONDS = 5.0
#: V8's flags (for the whole process, set before its first isolate). The rules are small and a
#: call's time is JSON in and out, so ``--jitless`` keeps V8 to its interpreter: the optimising
#: compilers' code in the library (~8 MiB resident once they ran) is never paged in, for the same
#: CPU per call (docs/performance.md, Memory). ``--single-threaded`` is mini-racer's default.
V8_FLAGS = ("--single-threaded", "--jitless")
#: The V8 library; its symbol tables, read once by the dynamic linker, are dropped after loading.
V8_LIBRARY = Path(py_mini_racer.__file__).parent / "libmini_racer.so"
_loaded = threading.Lock()
_pages_dropped = False
#: V8 collects garbage lazily under a ~1.5 GiB heap limit, so every call's garbage (a doc's JSON,
#: the parsed doc) stayed resident: ~4 MiB per 1,000 records in ``up --cht-sandbox``. A full
#: collection every this many calls keeps the heap to a few MiB (docs/performance.md, Memory).
COLLECT_EVERY_CALLS = 200

_PRELUDE = r"""
var __objectPath = {
  get: function (obj, path) {
    var parts = String(path).split('.');
    var cur = obj;
    for (var i = 0; i < parts.length; i++) {
      if (cur === null || cur === undefined) { return undefined; }
      cur = cur[parts[i]];
    }
    return cur;
  },
  set: function (obj, path, value) {
    var parts = String(path).split('.');
    var cur = obj;
    for (var i = 0; i < parts.length - 1; i++) {
      var key = parts[i];
      if (cur[key] === undefined || cur[key] === null) {
        cur[key] = /^\d+$/.test(parts[i + 1]) ? [] : {};
      }
      cur = cur[key];
    }
    cur[parts[parts.length - 1]] = value;
  }
};

// Sentinel runs each expression in a fresh vm context holding only `doc`; a non-string
// expression is coerced to its source text the way vm.runInNewContext does.
function __evalExpr(doc, __expr) {
  return eval(String(__expr));
}

function __relevant(docJson, expr) {
  var doc = JSON.parse(docJson);
  return !!__evalExpr(doc, expr);
}

function __map(docJson, mappingJson, key) {
  var doc = JSON.parse(docJson);
  var mapping = JSON.parse(mappingJson);
  var context = { doc: doc };
  var out = {};
  Object.keys(mapping).forEach(function (dest) {
    var conf = mapping[dest];
    var path = typeof conf === 'string' ? conf : conf.path;
    var expr = typeof conf === 'string' ? undefined : conf.expr;
    var optional = typeof conf === 'string' ? false : !!conf.optional;
    var value;
    if (expr) {
      try {
        value = __evalExpr(doc, expr);
      } catch (err) {
        throw new Error("Mapping error for '" + key + '/' + dest + "' JS error on source document: '" +
          doc._id + "': " + err);
      }
      if (!optional && value === undefined) {
        throw new Error("Mapping error for '" + key + '/' + dest + "' on source document '" + doc._id +
          "': expr evaluated to undefined");
      }
    } else if (path) {
      value = __objectPath.get(context, path);
      if (!optional && value === undefined) {
        throw new Error("Mapping error for '" + key + '/' + dest + "': cannot find '" + path +
          "' on source document '" + doc._id + "'");
      }
    } else {
      throw new Error("Mapping error for '" + key + '/' + dest + "': no expr or path");
    }
    __objectPath.set(out, dest, value);
  });
  return JSON.stringify(out);
}

// ---- tasks --------------------------------------------------------------------------------

var MS_IN_DAY = 24 * 60 * 60 * 1000;

function __makeUtils(nowMs) {
  var Utils = {
    MS_IN_DAY: MS_IN_DAY,
    now: function () { return new Date(nowMs); },
    addDate: function (date, days) {
      var result = date ? new Date(date.getTime()) : new Date(nowMs);
      result.setHours(0, 0, 0, 0);
      result.setDate(result.getDate() + days);
      return result;
    },
    isTimely: function () { return true; },
    getTimestamp: function (date) { return date ? new Date(date).getTime() : undefined; },
    isDateValid: function (date) { return !isNaN(new Date(date).getTime()); },
    getField: function (report, fieldPath) {
      return __objectPath.get(report, 'fields.' + fieldPath);
    },
    isFormArraySubmittedInWindow: function (reports, formArray, start, end, count) {
      var found = 0;
      (reports || []).forEach(function (r) {
        if (formArray.indexOf(r.form) !== -1 && r.reported_date >= start && r.reported_date <= end) {
          found++;
        }
      });
      return count ? found >= count : found > 0;
    },
    isFormSubmittedInWindow: function (reports, form, start, end, count) {
      return Utils.isFormArraySubmittedInWindow(reports, [form], start, end, count);
    },
    getMostRecentReport: function (reports, form) {
      var forms = Array.isArray(form) ? form : [form];
      var result = null;
      (reports || []).forEach(function (r) {
        var newer = !result || r.reported_date > result.reported_date;
        if (forms.indexOf(r.form) !== -1 && !r.deleted && newer) {
          result = r;
        }
      });
      return result;
    },
    getMostRecentTimestamp: function (reports, form) {
      var r = Utils.getMostRecentReport(reports, form);
      return r ? r.reported_date : undefined;
    }
  };
  return Utils;
}

function __loadModules(modules, entry, Utils, user, cht) {
  var cache = {};
  function resolve(from, name) {
    var base = from.indexOf('/') === -1 ? '' : from.slice(0, from.lastIndexOf('/') + 1);
    var parts = (name.indexOf('./') === 0 || name.indexOf('../') === 0 ? base + name : name).split('/');
    var out = [];
    parts.forEach(function (p) {
      if (p === '..') { out.pop(); } else if (p !== '.' && p !== '') { out.push(p); }
    });
    var path = out.join('/');
    if (modules[path] !== undefined) { return path; }
    if (modules[path + '.js'] !== undefined) { return path + '.js'; }
    if (modules[path + '/index.js'] !== undefined) { return path + '/index.js'; }
    return null;
  }
  function load(path) {
    if (cache[path]) { return cache[path].exports; }
    var module = { exports: {} };
    cache[path] = module;
    var req = function (name) {
      if (name === 'cht-nootils' || name === 'medic-nootils') {
        return function () { return Utils; };
      }
      var target = resolve(path, name);
      if (target === null) { throw new Error("Cannot find module '" + name + "' from '" + path + "'"); }
      return load(target);
    };
    var fn = new Function('module', 'exports', 'require', 'Utils', 'user', 'cht', modules[path]);
    fn(module, module.exports, req, Utils, user, cht);
    return module.exports;
  }
  return load(entry);
}

function __pad(n) { return (n < 10 ? '0' : '') + n; }
function __ymd(d) { return d.getFullYear() + '-' + __pad(d.getMonth() + 1) + '-' + __pad(d.getDate()); }

// cht-conf's declarative task emitter (semantics of src/nools/task-emitter.js + task-defaults.js),
// followed by the rules engine's date window (transform-task-emission-to-doc.js).
function __tasks(modulesJson, entry, userJson, contactsJson, nowMs) {
  var modules = JSON.parse(modulesJson);
  var user = JSON.parse(userJson);
  var contacts = JSON.parse(contactsJson);
  var Utils = __makeUtils(nowMs);
  var allow = function () { return true; };
  var cht = { v1: { hasPermissions: allow, hasAnyPermission: allow } };
  var taskDefs = __loadModules(modules, entry, Utils, user, cht);
  if (!Array.isArray(taskDefs)) { throw new Error('tasks.js must export an array of task definitions'); }
  var out = [];

  function defaultResolvedIf(task, c, r, event, dueDate) {
    var action = (task.actions || []).filter(function (a) { return !a.type || a.type === 'report'; })[0];
    if (!action || !action.form) { return false; }
    var start = Utils.addDate(dueDate, -event.start).getTime();
    if (r) { start = Math.max(start, r.reported_date + 1); }
    var end = Utils.addDate(dueDate, event.end + 1).getTime();
    return Utils.isFormSubmittedInWindow(c.reports, action.form, start, end);
  }

  function emitFor(task, idx, c, r) {
    var events = task.events ? (Array.isArray(task.events) ? task.events : [task.events]) : [];
    events.forEach(function (event, eventIdx) {
      var base = r ? new Date(r.reported_date) : new Date(c.contact.reported_date);
      var dueDate = event.dueDate ? event.dueDate(event, c, r) : Utils.addDate(base, event.days);
      if (!dueDate || isNaN(new Date(dueDate).getTime())) { return; }
      dueDate = new Date(dueDate);
      if (!Utils.isTimely(dueDate, event)) { return; }
      var resolved = task.resolvedIf
        ? !!task.resolvedIf.call(task, c, r, event, dueDate)
        : defaultResolvedIf(task, c, r, event, dueDate);
      var actions = (task.actions || []).map(function (a) {
        var content = { source: 'task', source_id: r ? r._id : c.contact._id, contact: c.contact };
        if (a.modifyContent) { a.modifyContent(content, c, r, event); }
        return { type: a.type || 'report', form: a.form, label: a.label || '', content: content };
      });
      var start = Utils.addDate(dueDate, -(event.start || 0));
      var end = Utils.addDate(dueDate, event.end || 0);
      var title = typeof task.title === 'function' ? task.title(c, r) : task.title;
      var priority = typeof task.priority === 'function' ? task.priority(c, r) : task.priority;
      out.push({
        _id: (r ? r._id : c.contact._id) + '~' + (event.id || eventIdx) + '~' + (task.name || idx),
        taskName: task.name || String(idx),
        title: title,
        icon: task.icon,
        priority: priority === undefined ? null : priority,
        forId: c.contact._id,
        reportId: r ? r._id : null,
        resolved: resolved,
        deleted: !!((r && r.deleted) || c.contact.deleted),
        dueDate: __ymd(dueDate),
        startDate: __ymd(start),
        endDate: __ymd(end),
        actions: actions
      });
    });
  }

  taskDefs.forEach(function (task, idx) {
    contacts.forEach(function (c) {
      if (task.appliesTo === 'reports') {
        (c.reports || []).forEach(function (r) {
          if (task.appliesToType && task.appliesToType.indexOf(r.form) === -1) { return; }
          if (task.appliesIf && !task.appliesIf(c, r)) { return; }
          emitFor(task, idx, c, r);
        });
      } else if (task.appliesTo === 'contacts') {
        if (!c.contact || c.contact.type === undefined && c.contact.contact_type === undefined) { return; }
        var type = c.contact.type === 'contact' ? c.contact.contact_type : c.contact.type;
        if (task.appliesToType && task.appliesToType.indexOf(type) === -1) { return; }
        if (task.appliesIf && !task.appliesIf(c)) { return; }
        emitFor(task, idx, c, null);
      }
    });
  });
  return JSON.stringify({ today: __ymd(new Date(nowMs)), tasks: out });
}
"""


class JsError(Exception):
    """A JS expression or rule threw (message as V8 reports it, first line)."""


class JsRuntime:
    """One V8 isolate with our prelude.

    Calls run on one dedicated thread: that serialises them (a context is not re-entrant) and lets
    mini-racer enforce its timeout, which it refuses to do on a thread running an event loop.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-v8")
        # created, used and closed on that thread only (mini-racer ties a context to its thread)
        self._ctx: MiniRacer = self._thread.submit(_new_context).result()
        self._thread.submit(self._ctx.eval, _PRELUDE).result()
        self.calls = 0  # calls made, counted on the V8 thread

    def close(self) -> None:
        self._thread.submit(self._ctx.close).result()
        self._thread.shutdown(wait=True)

    def _call(self, name: str, *args: Any) -> Any:
        future = self._thread.submit(self._call_on_thread, name, *args)
        try:
            return future.result()
        except Exception as exc:  # mini-racer raises its own tree; the message is what matters
            raise JsError(_first_error_line(str(exc))) from None

    def _call_on_thread(self, name: str, *args: Any) -> Any:
        """The call, and every ``COLLECT_EVERY_CALLS`` calls a full garbage collection first."""
        self.calls += 1
        if self.calls % COLLECT_EVERY_CALLS == 0:
            self._ctx.low_memory_notification()
        return self._ctx.call(name, *args, timeout_sec=_EVAL_TIMEOUT_SECONDS)

    def heap_stats(self) -> dict[str, int]:
        """V8's heap figures (``used_heap_size``, ``total_heap_size_executable``, …), bytes."""
        stats = self._thread.submit(self._ctx.heap_stats).result()
        return {str(k): int(v) for k, v in (json.loads(stats) if isinstance(stats, str) else stats).items()}

    def heap_used_bytes(self) -> int:
        """Bytes of V8's heap in use (live objects and garbage not yet collected)."""
        return self.heap_stats()["used_heap_size"]

    def relevant(self, expr: str, doc: dict[str, Any]) -> bool:
        """``relevant_to`` as Sentinel evaluates it: truthy means the config applies."""
        return bool(self._call("__relevant", json.dumps(doc), expr))

    def map_payload(self, doc: dict[str, Any], mapping: dict[str, Any], key: str) -> dict[str, Any]:
        """Sentinel's ``mapping``: destination paths from JS ``expr`` or source ``path`` on ``{doc}``."""
        result: dict[str, Any] = json.loads(self._call("__map", json.dumps(doc), json.dumps(mapping), key))
        return result

    def tasks(
        self,
        modules: dict[str, str],
        entry: str,
        user: dict[str, Any],
        contacts: list[dict[str, Any]],
        now_ms: int,
    ) -> dict[str, Any]:
        """Emissions of the task rules for these contacts (each ``{contact, reports}``)."""
        raw = self._call(
            "__tasks", json.dumps(modules), entry, json.dumps(user), json.dumps(contacts), now_ms
        )
        result: dict[str, Any] = json.loads(raw)
        return result


def _new_context() -> MiniRacer:
    """A V8 context; the first in the process starts V8 with ``V8_FLAGS`` and then drops the
    library's pages that only loading it read (~19 MiB: ``kit/arenas.py``)."""
    global _pages_dropped
    with _loaded:
        init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=True)  # another may have started V8
        ctx = MiniRacer()
        if not _pages_dropped:
            _pages_dropped = True
            release_loaded_pages(V8_LIBRARY)
    return ctx


def _first_error_line(message: str) -> str:
    for line in message.splitlines():
        stripped = line.strip()
        if stripped.startswith(("Error", "TypeError", "ReferenceError", "SyntaxError", "RangeError")):
            return stripped
    return message.strip().splitlines()[0] if message.strip() else "JavaScript error"
