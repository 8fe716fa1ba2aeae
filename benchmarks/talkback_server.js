// talkback serving recorded tapes, for the benchmarks: node talkback_server.js MODULE_DIR TAPES PORT tuned|stock
// Record mode DISABLED (unknown requests get talkback's 404). allowHeaders: [] in both modes, or a recording
// made by another client version never matches (talkback compares request headers by default).
// tuned: silent, no exit summary; stock: talkback's defaults (a log line per request, summary at exit).
const [moduleDir, tapes, port, mode] = process.argv.slice(2);
const talkback = require(moduleDir);
const opts = {
  host: "http://127.0.0.1:9",
  port: Number(port),
  path: tapes,
  record: talkback.Options.RecordMode.DISABLED,
  fallbackMode: talkback.Options.FallbackMode.NOT_FOUND,
  allowHeaders: [],
};
if (mode === "tuned") {
  opts.silent = true;
  opts.summary = false;
}
const server = talkback(opts);
server.start(() => console.log(`talkback on http://127.0.0.1:${port}`));
process.on("SIGTERM", () => { server.close(); process.exit(0); });
process.on("SIGINT", () => { server.close(); process.exit(0); });
