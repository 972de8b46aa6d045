/*
 * The shipped outbound push (FHIR_encounter) never throws on a report, whatever it lacks.
 *
 * The report is the one the CHT's form engine makes when the CHW fills the app form (harness
 * fillForm, Enketo in Chromium); then each optional part is taken away, as reports written by other
 * tools through /medic/_bulk_docs may lack it. Each mapping is evaluated as cht-core Sentinel does
 * (shared-libs/outbound: `relevant_to` and every `expr` run by Node's vm in a new context holding
 * only `doc`; a required mapping that is undefined is an error; undefined optional ones are left
 * out). A push that throws is queued by the CHT and retried every 5 minutes, forever: the report
 * would never arrive.
 */
const path = require('path');
const vm = require('vm');
const { expect } = require('chai');
const Harness = require('cht-conf-test-harness');

const configDir = process.env.CHT_CONFIG_DIR ||
  path.resolve(__dirname, '../../../../src/cht_interop/cht/config');
const outbound = require(path.join(configDir, 'app_settings.json')).outbound;

const harness = new Harness({
  directory: configDir,
  harnessDataPath: path.join(__dirname, '..', 'harness.defaults.json'),
});

const setPath = (target, dest, value) => {
  const parts = dest.split('.');
  const leaf = parts.pop();
  const parent = parts.reduce((node, part) => (node[part] = node[part] || {}), target);
  parent[leaf] = value;
};

// Sentinel's mapping: throws where the CHT would record a mapping error and queue the push.
const push = (name, doc) => {
  const config = outbound[name];
  if (!vm.runInNewContext(config.relevant_to, { doc })) {
    return null;
  }
  const payload = {};
  Object.entries(config.mapping).forEach(([dest, source]) => {
    const spec = typeof source === 'string' ? { path: source } : source;
    if (!spec.expr) {
      throw new Error(`${name}/${dest}: the shipped mappings are all expressions`);
    }
    const value = vm.runInNewContext(spec.expr, { doc });
    if (value === undefined && !spec.optional) {
      throw new Error(`Mapping error for '${name}/${dest}': expr evaluated to undefined`);
    }
    if (value !== undefined) {
      setPath(payload, dest, value);
    }
  });
  return JSON.parse(JSON.stringify(payload));
};

const without = (doc, dotted) => {
  const copy = JSON.parse(JSON.stringify(doc));
  const parts = dotted.split('.');
  const leaf = parts.pop();
  delete parts.reduce((node, part) => node[part], copy)[leaf];
  return copy;
};

describe('LTFU outbound push (FHIR_encounter) of the app form report', () => {
  let report;

  before(async () => {
    await harness.start();
    await harness.clear();
    const result = await harness.fillForm(
      {
        form: 'interop_follow_up',
        content: { source: 'task', source_id: 'record-1', service_request_id: 'sr-1', contact: { _id: 'patient_1' } },
      },
      ['returned_to_care', 'visit', 'Back at the clinic on Monday'],
    );
    expect(result.errors).to.be.empty;
    report = Object.assign({}, result.report, { _id: 'report-1' });
    report.reported_date = report.reported_date || harness.getNow();
  });
  after(async () => harness.stop());

  it('pushes the complete report as the contract says', () => {
    const payload = push('FHIR_encounter', report);
    expect(payload).to.deep.include({
      resourceType: 'Encounter',
      identifier: [{ system: 'cht', value: 'patient_1' }, { system: 'cht-report', value: 'report-1' }],
      status: 'finished',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'HH' },
      subject: { reference: 'Patient/?identifier=patient_1' },
      basedOn: [{ reference: 'ServiceRequest/sr-1' }],
      reasonCode: [{ text: 'Back at the clinic on Monday' }],
    });
    expect(payload.period.start).to.equal(new Date(report.reported_date).toISOString());
    expect(payload.extension[0].valueCodeableConcept.coding[0].code).to.equal('returned_to_care');
  });

  it('pushes the report without throwing whichever optional part it lacks', () => {
    const optional = ['reported_date', 'contact', 'content_type', 'form_version', 'hidden_fields']
      .filter(key => key in report)
      .concat(Object.keys(report.fields).map(key => `fields.${key}`));
    expect(optional).to.include.members([
      'reported_date', 'fields.patient_uuid', 'fields.patient_id', 'fields.source_id',
      'fields.service_request_id', 'fields.outcome', 'fields.method', 'fields.notes', 'fields.inputs',
    ]);
    optional.forEach(dotted => {
      const payload = push('FHIR_encounter', without(report, dotted));
      expect(payload, dotted).to.be.an('object');
      expect(payload.identifier[0], dotted).to.deep.equal({ system: 'cht', value: 'patient_1' });
      expect(payload.subject, dotted).to.deep.equal({ reference: 'Patient/?identifier=patient_1' });
      expect(payload.class.code, dotted).to.be.oneOf(['HH', 'VR']);
    });
    expect(push('FHIR_encounter', without(report, 'reported_date'))).to.not.have.property('period');
  });

  it('pushes nothing, and throws nothing, for a report that names no patient', () => {
    const bare = { _id: 'report-2', type: 'data_record', form: 'interop_follow_up' };
    expect(push('FHIR_encounter', bare)).to.equal(null);
    expect(push('FHIR_encounter', Object.assign({}, bare, { fields: { outcome: 'died' } }))).to.equal(null);
    expect(push('FHIR_encounter', Object.assign({}, bare, { fields: { inputs: 'x' } }))).to.equal(null);
  });
});
