// k6 load script for benchmarks/reliability (and tests/reliability): POST /inference with the
// bodies in $BODIES_FILE (a JSON array of JSON strings), cycling through them in order.
//   MODE=open        constant-arrival-rate: $RATE requests/s for $DURATION whatever the answers
//                    (open loop: a slow server does not slow the arrivals), $VUS..$MAX_VUS VUs
//   MODE=closed      constant-vus: $VUS clients for $DURATION, each sending when answered
//   MODE=iterations  shared-iterations: $ITERATIONS requests by $VUS clients (at most $MAX_DURATION)
// Counts every answer by status, whether 429/503 carried Retry-After, and the latency of the
// accepted (200) requests; writes k6's end-of-test summary as JSON to $SUMMARY_FILE.
import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter, Trend } from 'k6/metrics';

const bodies = new SharedArray('bodies', () => JSON.parse(open(__ENV.BODIES_FILE)));
const url = __ENV.TARGET_URL + '/inference';
const STATUSES = [200, 400, 404, 413, 415, 422, 429, 500, 502, 503, 504];
const byStatus = {};
for (const s of STATUSES) byStatus[s] = new Counter(`status_${s}`);
const otherStatus = new Counter('status_other');
const transportErrors = new Counter('status_0');
const retryAfterMissing = new Counter('retry_after_missing');
const accepted = new Trend('accepted_duration', true);

function scenario() {
  const mode = __ENV.MODE;
  if (mode === 'open') {
    return {
      executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
      duration: __ENV.DURATION, preAllocatedVUs: Number(__ENV.VUS), maxVUs: Number(__ENV.MAX_VUS),
    };
  }
  if (mode === 'iterations') {
    return {
      executor: 'shared-iterations', vus: Number(__ENV.VUS), iterations: Number(__ENV.ITERATIONS),
      maxDuration: __ENV.MAX_DURATION,
    };
  }
  if (mode === 'closed') {
    return { executor: 'constant-vus', vus: Number(__ENV.VUS), duration: __ENV.DURATION };
  }
  throw new Error(`MODE must be open, closed or iterations, not ${mode}`);
}

export const options = {
  scenarios: { load: scenario() },
  discardResponseBodies: true,
  // Open loop: each arrival is a new client on its own connection, as independent users are (and
  // no request races the server's keep-alive timeout on a connection idle since its last one).
  noConnectionReuse: __ENV.MODE === 'open',
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)', 'count'],
};

export default function () {
  const body = bodies[exec.scenario.iterationInTest % bodies.length];
  const res = http.post(url, body, {
    headers: { 'Content-Type': 'application/json' },
    timeout: __ENV.TIMEOUT || '60s',
    responseCallback: http.expectedStatuses(200),
  });
  if (res.status === 0) transportErrors.add(1);
  else if (byStatus[res.status]) byStatus[res.status].add(1);
  else otherStatus.add(1);
  if (res.status === 200) accepted.add(res.timings.duration);
  if ((res.status === 429 || res.status === 503) && !res.headers['Retry-After']) retryAfterMissing.add(1);
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY_FILE]: JSON.stringify(data) };
}
