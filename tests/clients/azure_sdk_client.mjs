// The seed LRO through the real Azure SDK for JavaScript: @azure/core-rest-pipeline (its retry policies:
// 429/503 wait retry-after-ms, then x-ms-retry-after-ms, then Retry-After; resets retried) and
// @azure/core-lro's createHttpPoller (polls wait Retry-After only, in whole seconds, else intervalInMs).
// The seed answers 202 + Location with a status body, which core-lro reads only from an
// Operation-Location, so the adapter presents the Location as one (what a hand-written Azure Maps
// client does). Usage: node azure_sdk_client.mjs BASE_URL DATASET_ID [INTERVAL_MS [RESOURCE_LOCATION_CONFIG]];
// prints one JSON line. RESOURCE_LOCATION_CONFIG is core-lro's option: "operation-location" (default here: the
// final GET follows the body's resourceLocation only) or "location" (core-lro's default: without a
// resourceLocation it GETs the Location, the status URL, once more).
// Install: npm ci --prefix tests/clients. HTTPS: NODE_EXTRA_CA_CERTS=$(replay-proxy ca).
import { createHttpPoller } from "@azure/core-lro";
import { createDefaultHttpClient, createPipelineFromOptions, createPipelineRequest } from "@azure/core-rest-pipeline";

const [base, datasetId, interval = "2000", resourceLocationConfig = "operation-location"] = process.argv.slice(2);
const httpClient = createDefaultHttpClient();
const pipeline = createPipelineFromOptions({ retryOptions: { maxRetries: 5, retryDelayInMs: 50 } });

async function send(method, url) {
  const request = createPipelineRequest({ method, url, allowInsecureConnection: true });
  const res = await pipeline.sendRequest(httpClient, request);
  const body = res.bodyAsText ? JSON.parse(res.bodyAsText) : undefined;
  const headers = res.headers.toJSON();
  return { flatResponse: body, rawResponse: { statusCode: res.status, headers, body, request: { method, url } } };
}

const lro = {
  async sendInitialRequest() {
    const res = await send("POST", `${base}/tilesets?api-version=2.0&datasetId=${encodeURIComponent(datasetId)}`);
    const { headers } = res.rawResponse;
    if (headers.location && !headers["operation-location"]) headers["operation-location"] = headers.location;
    return res;
  },
  async sendPollRequest(path) {
    return send("GET", new URL(path, base).href);
  },
};

try {
  const poller = createHttpPoller(lro, {
    intervalInMs: Number(interval),
    resourceLocationConfig,
  });
  const resource = await poller.pollUntilDone();
  const polled = poller.operationState.status;
  console.log(JSON.stringify({ status: polled === "succeeded" ? "Succeeded" : polled, resource: resource ?? null, error: null }));
} catch (err) {
  if (err?.code === undefined && err?.name !== "Error") throw err;
  console.log(JSON.stringify({ status: "Failed", resource: null, error: { code: err.code ?? null, message: err.message } }));
}
