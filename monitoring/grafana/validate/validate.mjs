// Validate Grafana dashboards against Grafana's own definitions.
//
//   npm ci && node validate.mjs [DASHBOARD_DIR]      (default: ../dashboards)
//
// @grafana/schema ships no JSON schema: its dashboard schema is published as TypeScript types
// generated from Grafana's CUE kinds. So each dashboard is type-checked with the TypeScript
// compiler as a literal of those types:
//   - the dashboard                      -> Dashboard              (@grafana/schema)
//   - each panel's options / custom      -> <Panel>PanelCfg Options / FieldConfig
//   - each Loki query (panels, annots.)  -> LokiDataQuery
//   - each Prometheus query              -> PrometheusDataQuery (the last @grafana/schema that
//                                           ships it, 10.4, installed as @grafana/schema-prometheus)
// Literal types are checked strictly, so an unknown key, a wrong type or a value outside an
// enum is an error. JSON has no enums, so Grafana's enum types are compared by their values.
// Every PromQL and LogQL expression is also parsed with the grammars Grafana's editors use
// (@prometheus-io/lezer-promql, @grafana/lezer-logql).
//
// Prints one line per problem and exits 1 if there is any; prints a JSON summary on success.
//
// Two helper modes read a JSON array of expressions on stdin and print one JSON result each:
//   node validate.mjs --promql   -> [{"expr", "error": offset|null, "metrics": [names]}]
//   node validate.mjs --logql    -> [{"expr", "error": offset|null}]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';
import { parser as logqlParser } from '@grafana/lezer-logql';
import { parser as promqlParser } from '@prometheus-io/lezer-promql';

const here = path.dirname(fileURLToPath(import.meta.url));
const dashboardDir = path.resolve(process.argv[2] ?? path.join(here, '..', 'dashboards'));

// Panel types we use, and the module holding their Options / FieldConfig types.
const PANEL_MODULES = {
  timeseries: 'timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen',
  stat: 'stat/panelcfg/x/StatPanelCfg_types.gen',
  gauge: 'gauge/panelcfg/x/GaugePanelCfg_types.gen',
  bargauge: 'bargauge/panelcfg/x/BarGaugePanelCfg_types.gen',
  table: 'table/panelcfg/x/TablePanelCfg_types.gen',
  logs: 'logs/panelcfg/x/LogsPanelCfg_types.gen',
  text: 'text/panelcfg/x/TextPanelCfg_types.gen',
};
// Panel types whose schema defines custom field config; for the others it must stay empty.
const HAS_FIELD_CONFIG = new Set(['timeseries', 'table']);

const PRELUDE = `
import type { AnnotationQuery, Dashboard } from '@grafana/schema';
import type { LokiDataQuery } from '@grafana/schema/dist/esm/raw/composable/loki/dataquery/x/LokiDataQuery_types.gen.js';
import type { PrometheusDataQuery } from '@grafana/schema-prometheus/dist/esm/raw/composable/prometheus/dataquery/x/PrometheusDataQuery_types.gen';
${Object.entries(PANEL_MODULES)
  .map(([name, mod]) => `import type * as ${name} from '@grafana/schema/dist/esm/raw/composable/${mod}.js';`)
  .join('\n')}

// Dashboard's annotation queries are generic in their query type: ours are Prometheus queries.
type CheckedDashboard = Omit<Dashboard, 'annotations'> & {
  annotations?: { list?: Array<AnnotationQuery<PrometheusDataQuery>> };
};

// A JSON document's view of a type: enums become the union of their values.
type Json<T> = T extends string
  ? \`\${T}\`
  : T extends number
    ? (\`\${T}\` extends \`\${infer N extends number}\` ? N : number)
    : T extends boolean | null | undefined
      ? T
      : T extends ReadonlyArray<infer U>
        ? Array<Json<U>>
        : T extends object
          ? { [K in keyof T]: Json<T[K]> }
          : T;
`;

const problems = [];
const summary = { dashboards: 0, panels: 0, promql: 0, logql: 0 };

function parseErrors(parser, expr) {
  const tree = parser.parse(expr);
  const errors = [];
  tree.iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(node.from);
    },
  });
  return errors;
}

// Grafana replaces these before a query leaves the browser; give the parser what Grafana would.
function expandGrafanaMacros(expr) {
  return expr
    .replace(/\$__(rate_interval|interval|range)\b/g, '5m')
    .replace(/\$\{?(\w+)(:\w+)?\}?/g, '.*');
}

function checkQuery(where, dsType, target) {
  const expr = target.expr;
  if (typeof expr !== 'string' || !expr.trim()) {
    problems.push(`${where}: query has no expr`);
    return;
  }
  const parser = dsType === 'loki' ? logqlParser : promqlParser;
  const errors = parseErrors(parser, expandGrafanaMacros(expr));
  if (errors.length) problems.push(`${where}: ${dsType} query does not parse near offset ${errors[0]}: ${expr}`);
  summary[dsType === 'loki' ? 'logql' : 'promql'] += 1;
}

function dsTypeOf(ref, fallback) {
  return (ref && typeof ref === 'object' && ref.type) || fallback;
}

function emitDashboard(file, dashboard) {
  const lines = PRELUDE.split('\n');
  const origins = []; // [0-based line of the generated file, what that line checks]
  const add = (label, type, value) => {
    origins.push([lines.length, label]);
    lines.push(`export const v${origins.length}: ${type} = ${JSON.stringify(value)};`);
  };
  add(`${file}: dashboard`, 'Json<CheckedDashboard>', dashboard);

  const panels = [];
  for (const p of dashboard.panels ?? []) {
    panels.push(p);
    if (p.type === 'row') panels.push(...(p.panels ?? []));
  }
  for (const p of panels) {
    if (p.type === 'row') continue;
    summary.panels += 1;
    const where = `${file}: panel ${p.id} "${p.title}"`;
    const mod = PANEL_MODULES[p.type];
    if (!mod) {
      problems.push(`${where}: panel type "${p.type}" has no schema here (allowed: ${Object.keys(PANEL_MODULES)})`);
      continue;
    }
    add(`${where}: options`, `Json<${p.type}.Options>`, p.options ?? {});
    const customType = HAS_FIELD_CONFIG.has(p.type) ? `Json<${p.type}.FieldConfig>` : 'Record<string, never>';
    add(`${where}: fieldConfig.defaults.custom`, customType, p.fieldConfig?.defaults?.custom ?? {});
    for (const t of p.targets ?? []) {
      const ds = dsTypeOf(t.datasource, dsTypeOf(p.datasource, 'prometheus'));
      const type = ds === 'loki' ? 'LokiDataQuery' : ds === 'prometheus' ? 'PrometheusDataQuery' : null;
      if (!type) {
        problems.push(`${where}: target ${t.refId} uses data source type "${ds}", which has no query schema here`);
        continue;
      }
      add(`${where}: target ${t.refId}`, `Json<${type}>`, t);
      checkQuery(`${where}: target ${t.refId}`, ds, t);
    }
  }
  for (const a of dashboard.annotations?.list ?? []) {
    if (!a.target) continue;
    const ds = dsTypeOf(a.datasource, 'grafana');
    const where = `${file}: annotation "${a.name}"`;
    if (ds === 'prometheus' || ds === 'loki') {
      add(`${where}: target`, ds === 'loki' ? 'Json<LokiDataQuery>' : 'Json<PrometheusDataQuery>', a.target);
      checkQuery(where, ds, a.target);
    }
  }
  for (const v of dashboard.templating?.list ?? []) {
    const raw = typeof v.query === 'string' ? v.query : v.query?.query;
    if (v.type === 'query' && raw) {
      // label_values(SELECTOR, LABEL) is Grafana's; the selector inside is PromQL.
      const q = raw.replace(/^label_values\((.*),\s*\w+\)$/, '$1');
      const errors = parseErrors(promqlParser, expandGrafanaMacros(q));
      if (errors.length) problems.push(`${file}: variable ${v.name}: query does not parse: ${raw}`);
      summary.promql += 1;
    }
  }
  return { source: lines.join('\n'), origins };
}

// Metric names of a PromQL expression: the Identifier of every VectorSelector.
function metricNames(expr) {
  const names = new Set();
  const tree = promqlParser.parse(expr);
  tree.iterate({
    enter: (node) => {
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') {
        names.add(expr.slice(node.from, node.to));
      }
    },
  });
  return [...names].sort();
}

function expressionMode(mode) {
  const exprs = JSON.parse(fs.readFileSync(0, 'utf8'));
  const parser = mode === '--logql' ? logqlParser : promqlParser;
  const out = exprs.map((expr) => {
    const errors = parseErrors(parser, expandGrafanaMacros(expr));
    const result = { expr, error: errors.length ? errors[0] : null };
    if (mode === '--promql') result.metrics = metricNames(expandGrafanaMacros(expr));
    return result;
  });
  console.log(JSON.stringify(out));
}

function main() {
  if (process.argv[2] === '--promql' || process.argv[2] === '--logql') {
    expressionMode(process.argv[2]);
    return;
  }
  const files = fs.readdirSync(dashboardDir).filter((f) => f.endsWith('.json')).sort();
  if (!files.length) {
    console.error(`no dashboards in ${dashboardDir}`);
    process.exit(1);
  }
  const workDir = fs.mkdtempSync(path.join(here, '.check-'));
  const emitted = new Map();
  try {
    for (const file of files) {
      let dashboard;
      try {
        dashboard = JSON.parse(fs.readFileSync(path.join(dashboardDir, file), 'utf8'));
      } catch (err) {
        problems.push(`${file}: not JSON: ${err.message}`);
        continue;
      }
      summary.dashboards += 1;
      const out = path.join(workDir, file.replace(/\.json$/, '.ts'));
      const { source, origins } = emitDashboard(file, dashboard);
      fs.writeFileSync(out, source);
      emitted.set(out, origins);
    }
    const program = ts.createProgram([...emitted.keys()], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      skipLibCheck: true,
      types: [],
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const message = ts.flattenDiagnosticMessageText(d.messageText, '\n    ');
      if (!d.file) {
        problems.push(`typescript: ${message}`);
        continue;
      }
      const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
      const origins = emitted.get(path.resolve(d.file.fileName)) ?? [];
      const origin = [...origins].reverse().find(([l]) => l <= line);
      // The offending key or value, as it stands in the dashboard JSON.
      const at = d.file.text.slice(d.start ?? 0, (d.start ?? 0) + 60).split(/[,}]/)[0];
      problems.push(`${origin ? origin[1] : d.file.fileName}: ${message} (at ${at})`);
    }
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
  if (problems.length) {
    for (const p of problems) console.error(p);
    console.error(`${problems.length} problem(s) in ${dashboardDir}`);
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, ...summary }));
}

main();
