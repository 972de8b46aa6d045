/*
 * The shipped LTFU configuration, run by cht-conf-test-harness: the CHT's own rules engine and
 * form engine (Enketo) in Chromium, emulating cht-core 4.11.
 *
 * CHT_CONFIG_DIR points at a compiled copy of src/cht_interop/cht/config (tests/cht/test_harness.py
 * compiles one); without it the packaged directory (with its committed app_settings.json) is used.
 */
const fs = require('fs');
const path = require('path');
const { expect } = require('chai');
const Harness = require('cht-conf-test-harness');

const configDir = process.env.CHT_CONFIG_DIR ||
  path.resolve(__dirname, '../../../../src/cht_interop/cht/config');

const harness = new Harness({
  directory: configDir,
  harnessDataPath: path.join(__dirname, '..', 'harness.defaults.json'),
});

const RECORD_DAY = '2026-03-02';
const DAY = 24 * 60 * 60 * 1000;

// The mediator's follow-up record: the doc POST /api/v2/records would store, under an id derived
// from the follow-up (docs/cht-contract.md §1).
const followUpRecord = (overrides = {}) => Object.assign({
  _id: 'record-1',
  type: 'data_record',
  form: 'INTEROP_FOLLOW_UP',
  errors: [],
  tasks: [],
  reported_date: harness.getNow(),
  fields: {
    patient_uuid: 'patient_1',
    service_request_id: 'sr-1',
    task_id: 'task-1',
    reason: 'Missed appointment',
    requester: 'Facility A',
    requester_id: 'facility-a',
  },
  sms_message: { form: 'INTEROP_FOLLOW_UP' },
}, overrides);

// The mediator's cancel record (docs/cht-contract.md §2).
const cancelRecord = (serviceRequestId) => ({
  _id: 'cancel-' + serviceRequestId,
  type: 'data_record',
  form: 'INTEROP_FOLLOW_UP_CANCEL',
  errors: [],
  tasks: [],
  reported_date: harness.getNow(),
  fields: { patient_uuid: 'patient_1', service_request_id: serviceRequestId, reason: 'Appointment kept' },
  sms_message: { form: 'INTEROP_FOLLOW_UP_CANCEL' },
});

/*
 * The trace: every doc the scenario writes and every task list the CHW sees, in order, with the mock
 * time. Written to CHT_HARNESS_TRACE when set, so the sandbox can be held to what the CHT computes
 * (tests/cht/test_harness.py keeps tests/cht/harness/trace.json as that fixture). Generated ids
 * (the filled form's report _id, its instanceID) are renamed in order so the trace is stable.
 */
const trace = [];
let currentTest = '';
let tracing = false; // off while the harness re-pushes its default contacts (harness.defaults.json)
const renamed = new Map();
const stableId = id => {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-/.test(id)) {
    return id;
  }
  if (!renamed.has(id)) {
    renamed.set(id, `generated-${renamed.size + 1}`);
  }
  return renamed.get(id);
};
const stable = value => JSON.parse(JSON.stringify(value), (key, v) => {
  if (typeof v === 'string' && key === 'instanceID') {
    return 'uuid:' + stableId(v.replace(/^uuid:/, ''));
  }
  return typeof v === 'string' ? stableId(v) : v;
});

const pushMockedDoc = harness.pushMockedDoc.bind(harness);
harness.pushMockedDoc = (...docs) => {
  if (tracing) {
    docs.forEach(doc => trace.push({ test: currentTest, now: harness.getNow(), write: stable(doc) }));
  }
  return pushMockedDoc(...docs);
};

const followUpTasks = async () => {
  const tasks = await harness.getTasks({ title: 'task.interop_follow_up.title' });
  trace.push({
    test: currentTest,
    now: harness.getNow(),
    tasks: tasks.map(task => stable({
      state: task.state,
      owner: task.owner,
      forId: task.emission.forId,
      dueDate: task.emission.dueDate,
      startDate: task.emission.startDate,
      endDate: task.emission.endDate,
      actions: task.emission.actions.map(({ type, form, content }) => ({ type, form, content })),
    })),
  });
  return tasks;
};

describe('LTFU follow-up task (interop-follow-up)', () => {
  before(async () => harness.start());
  after(async () => {
    await harness.stop();
    if (process.env.CHT_HARNESS_TRACE) {
      const contacts = require(path.join(__dirname, '..', 'harness.defaults.json')).docs;
      const out = { user: harness.options.user, contacts, events: trace };
      fs.writeFileSync(process.env.CHT_HARNESS_TRACE, JSON.stringify(out, null, 2) + '\n');
    }
  });
  beforeEach(async function () {
    currentTest = this.currentTest.title;
    renamed.clear();
    tracing = false;
    await harness.clear();
    await harness.setNow(RECORD_DAY);
    tracing = true;
  });
  afterEach(() => {
    expect(harness.consoleErrors.map(msg => `${msg.type()}: ${msg.text()}`).join('\n')).to.equal('');
  });

  it('shows no task before any follow-up record', async () => {
    expect(await followUpTasks()).to.be.empty;
  });

  it('gives the CHW a task from the record, completed by the app form, which clears it', async () => {
    harness.pushMockedDoc(followUpRecord());

    const tasks = await followUpTasks();
    expect(tasks).to.have.length(1);
    const [task] = tasks;
    expect(task.state).to.equal('Ready');
    expect(task.owner).to.equal('patient_1');
    expect(task.emission.forId).to.equal('patient_1');
    expect(task.emission.dueDate).to.equal('2026-03-09');
    const [action] = task.emission.actions;
    expect(action.form).to.equal('interop_follow_up');
    expect(action.content).to.include({ source: 'task', source_id: 'record-1', service_request_id: 'sr-1' });

    await harness.flush(2);
    const result = await harness.loadAction(task, ['returned_to_care', 'visit', 'Back at the clinic on Monday']);
    expect(result.errors).to.be.empty;
    expect(result.report).to.nested.include({
      form: 'interop_follow_up',
      'fields.patient_uuid': 'patient_1',
      'fields.patient_id': 'patient_1',
      'fields.source_id': 'record-1',
      'fields.service_request_id': 'sr-1',
      'fields.outcome': 'returned_to_care',
      'fields.method': 'visit',
      'fields.notes': 'Back at the clinic on Monday',
      'fields.inputs.source': 'task',
      'fields.inputs.contact._id': 'patient_1',
    });

    expect(await followUpTasks()).to.be.empty;
    expect(await harness.countTaskDocsByState({ title: 'task.interop_follow_up.title' }))
      .to.nested.include({ Completed: 1, Ready: 0, Failed: 0 });
  });

  it('accepts every outcome and method the contract names', async () => {
    const outcomes = ['returned_to_care', 'refused', 'not_located', 'moved_away', 'died', 'other'];
    const methods = ['visit', 'phone', 'sms'];
    for (let i = 0; i < outcomes.length; i++) {
      const method = methods[i % methods.length];
      const result = await harness.fillForm(
        { form: 'interop_follow_up', content: { source: 'task', source_id: 'r', contact: { _id: 'patient_1' } } },
        [outcomes[i], method, ''],
      );
      expect(result.errors).to.be.empty;
      expect(result.report.fields).to.include({ outcome: outcomes[i], method });
    }
  });

  it('gives one task when the mediator sends the same follow-up record twice', async () => {
    harness.pushMockedDoc(followUpRecord());
    await harness.flush(1);
    harness.pushMockedDoc(followUpRecord({ _id: 'record-1-resent', reported_date: harness.getNow() }));

    const tasks = await followUpTasks();
    expect(tasks).to.have.length(1);
    expect(tasks[0].emission.actions[0].content).to.include({ source_id: 'record-1' });

    const result = await harness.loadAction(tasks[0], ['returned_to_care', 'phone', '']);
    expect(result.errors).to.be.empty;
    expect(await followUpTasks()).to.be.empty;
  });

  it('clears the task when the mediator cancels the follow-up', async () => {
    harness.pushMockedDoc(followUpRecord());
    expect(await followUpTasks()).to.have.length(1);

    await harness.flush(1);
    harness.pushMockedDoc(cancelRecord('sr-1'));

    expect(await followUpTasks()).to.be.empty;
    expect(await harness.countTaskDocsByState({ title: 'task.interop_follow_up.title' }))
      .to.nested.include({ Completed: 1, Ready: 0 });
  });

  it('keeps the task when a cancel names another service request', async () => {
    harness.pushMockedDoc(followUpRecord());
    await harness.flush(1);
    harness.pushMockedDoc(cancelRecord('sr-other'));

    expect(await followUpTasks()).to.have.length(1);
  });

  it('keeps the task when only an older follow-up form exists for the patient', async () => {
    harness.pushMockedDoc({
      _id: 'old-report', type: 'data_record', form: 'interop_follow_up', reported_date: harness.getNow() - 30 * DAY,
      fields: { patient_id: 'patient_1', patient_uuid: 'patient_1', service_request_id: 'sr-1', outcome: 'refused' },
    });
    harness.pushMockedDoc(followUpRecord());

    expect(await followUpTasks()).to.have.length(1);
  });

  it('stays Ready through the window and fails after it', async () => {
    harness.pushMockedDoc(followUpRecord());
    expect(await followUpTasks()).to.have.length(1);

    await harness.flush(7);
    expect(await followUpTasks()).to.have.length(1);

    await harness.flush(1);
    expect(await followUpTasks()).to.be.empty;
    expect(await harness.countTaskDocsByState({ title: 'task.interop_follow_up.title' }))
      .to.nested.include({ Failed: 1, Ready: 0, Completed: 0 });
  });
});
