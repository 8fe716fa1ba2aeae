// A Node suite (node:test + the built-in fetch, no npm dependency) that tests a small client of the
// Azure Maps Creator tileset API against `replay-proxy serve`: each test loads its scenario through the
// control API, runs the client, steers the operation when the story needs it, and fails on the verdict.
//
//   node --test examples/node/            (from the repository root: scenario paths are relative to it)
//
// REPLAY_PROXY is the command that runs replay-proxy (default: `replay-proxy`; e.g. `uv run replay-proxy`).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";

const command = (process.env.REPLAY_PROXY || "replay-proxy").split(" ").filter(Boolean);
let proxy;
let base;

before(async () => {
  proxy = spawn(command[0], [...command.slice(1), "serve", "--port", "0", "--retry-after", "0.05", "-q"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const [line] = await once(createInterface({ input: proxy.stdout }), "line"); // its ready line
  base = line.match(/http:\/\/\S+/)[0];
});

after(async () => {
  proxy.kill("SIGTERM");
  const [code] = await once(proxy, "exit");
  assert.equal(code, 0, "replay-proxy did not stop cleanly");
});

async function control(method, path, body) {
  const res = await fetch(`${base}/__replay-proxy/${path}`, {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: { "content-type": "application/json" },
  });
  const data = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}

const use = (...scenarios) => control("POST", "use", { scenarios });

async function assertCleanVerdict(skip = []) {
  const verdict = await control("GET", `verdict?skip=${skip.join(",")}`);
  assert.ok(verdict.ok, verdict.violations.map((v) => `${v.check}: ${v.message}`).join("\n"));
}

// -- the client under test: start a tileset job, poll it honouring the delays, return the tileset --------

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

function delayOf(res) {
  const ms = res.headers.get("retry-after-ms");
  if (ms !== null) return Number(ms) / 1000;
  const seconds = res.headers.get("retry-after");
  return seconds !== null && /^\d+$/.test(seconds) ? Number(seconds) : 1;
}

class CreatorError extends Error {}

async function createTileset(datasetId, { deadline = 10 } = {}) {
  const start = await fetch(`${base}/tilesets?api-version=2.0&datasetId=${datasetId}`, { method: "POST" });
  if (start.status !== 202) throw new CreatorError(`start refused: ${start.status} ${await start.text()}`);
  const statusUrl = new URL(start.headers.get("location"), base).href;
  const giveUp = Date.now() + deadline * 1000;
  for (;;) {
    const res = await fetch(statusUrl);
    const body = await res.json();
    if (body.status === "Succeeded") {
      return body.resourceLocation ? (await fetch(body.resourceLocation)).json() : body;
    }
    if (body.status === "Failed" || body.status === "Canceled") {
      throw new CreatorError(`${body.status}: ${body.error ? body.error.code : ""}`);
    }
    if (Date.now() > giveUp) throw new CreatorError(`timed out: still ${body.status}`);
    await sleep(delayOf(res));
  }
}

// -- the tests ------------------------------------------------------------------------------------------

test("a tileset job that succeeds returns the tileset", async () => {
  await use("scenarios/azure-maps/tileset-succeeds.yaml");
  const tileset = await createTileset("my-dataset");
  assert.equal(tileset.datasetId, "my-dataset");
  await assertCleanVerdict();
});

test("a failed job raises the service's error", async () => {
  await use("scenarios/azure-maps/tileset-fails.yaml");
  await assert.rejects(createTileset("my-dataset"), /Failed: InvalidFeature/);
  await assertCleanVerdict();
});

test("the client gives up at its deadline while the job is held", async () => {
  await use("scenarios/examples/held-job.yaml");
  await assert.rejects(createTileset("my-dataset", { deadline: 0.3 }), /timed out: still Running/);
  await assertCleanVerdict(["unfinished"]); // it gave up, as it should
});

test("a failure decided by the test, while the client polls", async () => {
  await use("scenarios/examples/held-job.yaml");
  const outcome = createTileset("my-dataset");
  let operations = [];
  for (let i = 0; i < 200 && operations.length === 0; i++) {
    ({ operations } = await control("GET", "operations"));
    if (operations.length === 0) await sleep(0.01);
  }
  const error = { code: "NoGeometry", message: "No geometry was provided." };
  await control("POST", `operations/${operations[0].id}/fail`, { error });
  await assert.rejects(outcome, /Failed: NoGeometry/);
  await assertCleanVerdict();
});

test("the journal says what the client sent and what answered", async () => {
  await use("scenarios/azure-maps/tileset-succeeds.yaml");
  await createTileset("journal-dataset");
  const { entries } = await control("GET", "journal");
  assert.deepEqual(
    entries.map((e) => `${e.method} ${e.status} ${e.source}`).slice(0, 2),
    ["POST 202 scenario", "GET 200 scenario"],
  );
  assert.equal(entries.at(-1).method, "GET"); // the tileset itself
});
