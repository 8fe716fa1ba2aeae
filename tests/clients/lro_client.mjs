// A client of the seed LRO (Azure Maps Creator tilesets) in Node 20's built-in fetch, written as a user
// outside this project would: POST /tilesets -> 202 + Location; poll honouring retry-after-ms /
// x-ms-retry-after-ms / Retry-After (the Azure SDK for JavaScript's order); retry 429/5xx and resets;
// stop at Succeeded/Failed; GET the resourceLocation. --naive ignores every delay.
// Usage: node lro_client.mjs BASE_URL DATASET_ID [--naive]; prints one JSON line: the outcome.
// HTTPS: NODE_EXTRA_CA_CERTS=$(replay-proxy ca) node lro_client.mjs https://127.0.0.1:PORT ...
const [base, datasetId, flag] = process.argv.slice(2);
const naive = flag === "--naive";
const MAX_REQUESTS = 50;
let requests = 0;
let lastDelay = 0.05; // what to wait after a reset: the last delay we were told, else 50 ms

const sleep = (s) => new Promise((r) => setTimeout(r, naive ? 0 : s * 1000));

function delayOf(res) {
  for (const name of ["retry-after-ms", "x-ms-retry-after-ms"]) {
    const v = res.headers.get(name);
    if (v !== null && /^\d+(\.\d+)?$/.test(v.trim())) return Number(v) / 1000;
  }
  const ra = res.headers.get("retry-after");
  if (ra === null) return null;
  if (/^\d+$/.test(ra.trim())) return Number(ra);
  const date = Date.parse(ra);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

async function send(method, url) {
  // One logical request: retried after a reset, a 429 or a 5xx, waiting what the answer said.
  for (let attempt = 1; ; attempt++) {
    if (++requests > MAX_REQUESTS) throw new Error(`gave up after ${MAX_REQUESTS} requests`);
    let res;
    try {
      res = await fetch(url, { method });
    } catch (err) {
      if (attempt >= 5) throw err;
      await sleep(lastDelay);
      continue;
    }
    const delay = delayOf(res);
    if (delay !== null) lastDelay = delay;
    const body = await res.text();
    if ((res.status === 429 || res.status >= 500) && attempt < 5) {
      await sleep(delay ?? 1);
      continue;
    }
    return { res, body, delay };
  }
}

async function main() {
  const start = await send("POST", `${base}/tilesets?api-version=2.0&datasetId=${encodeURIComponent(datasetId)}`);
  if (start.res.status !== 202) throw new Error(`start: HTTP ${start.res.status}: ${start.body}`);
  const location = new URL(start.res.headers.get("location"), base).href;
  await sleep(start.delay ?? 0);
  for (;;) {
    const poll = await send("GET", location);
    if (poll.res.status >= 400) throw new Error(`poll: HTTP ${poll.res.status}: ${poll.body}`);
    const op = JSON.parse(poll.body);
    if (op.status === "Failed") return { status: "Failed", error: op.error ?? null, resource: null, requests };
    if (op.status === "Succeeded") {
      let resource = null;
      if (op.resourceLocation) {
        const got = await send("GET", new URL(op.resourceLocation, base).href);
        resource = JSON.parse(got.body);
      }
      return { status: "Succeeded", error: null, resource, requests };
    }
    await sleep(poll.delay ?? 1);
  }
}

main().then(
  (outcome) => console.log(JSON.stringify(outcome)),
  (err) => { console.error(`lro_client.mjs: ${err.stack ?? err}`); process.exit(1); },
);
