/*
 * The LTFU follow-up task (docs/cht-contract.md §3).
 *
 * One task for the patient's CHW from each INTEROP_FOLLOW_UP record, opening the interop_follow_up
 * app form. A second record for the same service request makes no second task: only the earliest
 * record of a service request applies. (The mediator writes each record once, under an id derived
 * from the follow-up; mediators that used the records API, which has no idempotency key, could
 * leave a second one when they stopped between the CHT's answer and their own bookkeeping.) Resolved when that form is submitted for the patient (same service request, or the task's
 * own record as source), or when an INTEROP_FOLLOW_UP_CANCEL record for the same service request
 * arrives, in either case on or after the record's day.
 *
 * Self-contained on purpose (no require, no Utils): the CHT sandbox evaluates this file unchanged.
 */

var FOLLOW_UP_RECORD = 'INTEROP_FOLLOW_UP';
var CANCEL_RECORD = 'INTEROP_FOLLOW_UP_CANCEL';
var FOLLOW_UP_FORM = 'interop_follow_up';
var WINDOW_DAYS = 7;

function fieldsOf(report) {
  return (report && report.fields) || {};
}

function isAfterRecord(candidate, record) {
  return (candidate.reported_date || 0) >= (record.reported_date || 0);
}

function completesFollowUp(candidate, record) {
  if (candidate.form !== FOLLOW_UP_FORM || !isAfterRecord(candidate, record)) {
    return false;
  }
  var requestId = fieldsOf(record).service_request_id;
  var fields = fieldsOf(candidate);
  var inputs = fields.inputs || {};
  return fields.source_id === record._id ||
    inputs.source_id === record._id ||
    (!!requestId && fields.service_request_id === requestId);
}

function isEarlier(a, b) {
  var at = a.reported_date || 0;
  var bt = b.reported_date || 0;
  return at < bt || (at === bt && a._id < b._id);
}

function isFirstRecordOfRequest(contact, record) {
  var requestId = fieldsOf(record).service_request_id;
  if (!requestId) {
    return true;
  }
  var reports = (contact && contact.reports) || [];
  for (var i = 0; i < reports.length; i++) {
    var other = reports[i];
    if (other._id !== record._id && other.form === FOLLOW_UP_RECORD &&
      fieldsOf(other).service_request_id === requestId && isEarlier(other, record)) {
      return false;
    }
  }
  return true;
}

function cancelsFollowUp(candidate, record) {
  var requestId = fieldsOf(record).service_request_id;
  return candidate.form === CANCEL_RECORD &&
    !!requestId &&
    fieldsOf(candidate).service_request_id === requestId &&
    isAfterRecord(candidate, record);
}

module.exports = [
  {
    name: 'interop-follow-up',
    icon: 'icon-follow-up',
    title: 'task.interop_follow_up.title',
    appliesTo: 'reports',
    appliesToType: [FOLLOW_UP_RECORD],
    appliesIf: function (contact, report) {
      return !!fieldsOf(report).patient_uuid && isFirstRecordOfRequest(contact, report);
    },
    actions: [
      {
        type: 'report',
        form: FOLLOW_UP_FORM,
        label: 'Follow up',
        modifyContent: function (content, contact, report) {
          content.service_request_id = fieldsOf(report).service_request_id;
        },
      },
    ],
    events: [
      { id: 'interop-follow-up', days: WINDOW_DAYS, start: WINDOW_DAYS, end: 0 },
    ],
    resolvedIf: function (contact, report) {
      var reports = (contact && contact.reports) || [];
      for (var i = 0; i < reports.length; i++) {
        if (reports[i]._id !== report._id &&
          (completesFollowUp(reports[i], report) || cancelsFollowUp(reports[i], report))) {
          return true;
        }
      }
      return false;
    },
  },
];
