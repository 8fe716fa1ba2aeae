// A Java single-file test (JDK 11+, java.net.http, no dependency) of a small client of the Azure Maps
// Creator tileset API against `replay-proxy serve`: each test loads its scenario through the control
// API, runs the client, steers the operation when the story needs it, and fails on the verdict.
//
//   java examples/java/CreatorTest.java        (from the repository root: scenario paths are relative to it)
//
// REPLAY_PROXY is the command that runs replay-proxy (default: `replay-proxy`; e.g. `uv run replay-proxy`).
// Exit status 0 when every test passed, 1 otherwise.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class CreatorTest {
    static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
    static String base;

    public static void main(String[] args) throws Exception {
        String command = System.getenv().getOrDefault("REPLAY_PROXY", "replay-proxy");
        List<String> argv = new ArrayList<>(Arrays.asList(command.trim().split("\\s+")));
        argv.addAll(List.of("serve", "--port", "0", "--retry-after", "0.05", "-q"));
        Process proxy = new ProcessBuilder(argv).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        BufferedReader out = new BufferedReader(new InputStreamReader(proxy.getInputStream(), StandardCharsets.UTF_8));
        Matcher url = Pattern.compile("http://\\S+").matcher(out.readLine()); // its ready line
        if (!url.find()) throw new IllegalStateException("replay-proxy printed no URL");
        base = url.group();
        int failed = 0;
        try {
            failed += run("a tileset job that succeeds returns the tileset", CreatorTest::succeeds);
            failed += run("a failed job raises the service's error", CreatorTest::fails);
            failed += run("the client gives up at its deadline while the job is held", CreatorTest::heldTimesOut);
            failed += run("a failure decided by the test, while the client polls", CreatorTest::steeredFailure);
        } finally {
            proxy.destroy(); // SIGTERM
            if (!proxy.waitFor(30, TimeUnit.SECONDS) || proxy.exitValue() != 0) {
                System.out.println("not ok: replay-proxy did not stop cleanly");
                failed++;
            }
        }
        System.out.println(failed == 0 ? "all tests passed" : failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }

    interface Body { void run() throws Exception; }

    static int run(String name, Body body) {
        try {
            body.run();
            System.out.println("ok: " + name);
            return 0;
        } catch (Throwable e) {
            System.out.println("not ok: " + name + ": " + e);
            return 1;
        }
    }

    // -- the control API ------------------------------------------------------------------------------------

    static String control(String method, String path, String json) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + "/__replay-proxy/" + path))
            .header("Content-Type", "application/json");
        request.method(method, json == null ? HttpRequest.BodyPublishers.noBody() : HttpRequest.BodyPublishers.ofString(json));
        HttpResponse<String> res = HTTP.send(request.build(), HttpResponse.BodyHandlers.ofString());
        if (res.statusCode() != 200) throw new AssertionError(method + " " + path + ": " + res.statusCode() + " " + res.body());
        return res.body();
    }

    static void use(String scenario) throws Exception {
        control("POST", "use", "{\"scenarios\": [\"" + scenario + "\"]}");
    }

    static void assertCleanVerdict(String skip) throws Exception {
        String verdict = control("GET", "verdict?skip=" + skip, null);
        if (!verdict.contains("\"ok\": true")) throw new AssertionError("verdict: " + verdict);
    }

    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\":\\s*\"([^\"]*)\"").matcher(json);
        return m.find() ? m.group(1) : null;
    }

    // -- the client under test ------------------------------------------------------------------------------

    static class CreatorException extends Exception {
        CreatorException(String message) { super(message); }
    }

    static String createTileset(String datasetId, double deadlineSeconds) throws Exception {
        HttpResponse<String> start = HTTP.send(
            HttpRequest.newBuilder(URI.create(base + "/tilesets?api-version=2.0&datasetId=" + datasetId))
                .POST(HttpRequest.BodyPublishers.noBody()).build(),
            HttpResponse.BodyHandlers.ofString());
        if (start.statusCode() != 202) throw new CreatorException("start refused: " + start.statusCode());
        URI statusUrl = URI.create(base).resolve(start.headers().firstValue("Location").orElseThrow());
        long giveUp = System.nanoTime() + (long) (deadlineSeconds * 1e9);
        while (true) {
            HttpResponse<String> poll = HTTP.send(HttpRequest.newBuilder(statusUrl).build(), HttpResponse.BodyHandlers.ofString());
            String status = field(poll.body(), "status");
            if ("Succeeded".equals(status)) {
                String resource = field(poll.body(), "resourceLocation");
                return HTTP.send(HttpRequest.newBuilder(URI.create(resource)).build(), HttpResponse.BodyHandlers.ofString()).body();
            }
            if ("Failed".equals(status) || "Canceled".equals(status)) {
                throw new CreatorException(status + ": " + field(poll.body(), "code"));
            }
            if (System.nanoTime() > giveUp) throw new CreatorException("timed out: still " + status);
            double delay = poll.headers().firstValue("retry-after-ms").map(ms -> Double.parseDouble(ms) / 1000)
                .orElseGet(() -> poll.headers().firstValue("Retry-After").map(Double::parseDouble).orElse(1.0));
            Thread.sleep((long) (delay * 1000));
        }
    }

    static String expectFailure(CompletableFuture<String> outcome) throws Exception {
        try {
            outcome.get(30, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            return e.getCause().getMessage();
        }
        throw new AssertionError("the client did not fail");
    }

    // -- the tests ------------------------------------------------------------------------------------------

    static void succeeds() throws Exception {
        use("scenarios/azure-maps/tileset-succeeds.yaml");
        String tileset = createTileset("my-dataset", 10);
        if (!"my-dataset".equals(field(tileset, "datasetId"))) throw new AssertionError(tileset);
        assertCleanVerdict("");
    }

    static void fails() throws Exception {
        use("scenarios/azure-maps/tileset-fails.yaml");
        try {
            createTileset("my-dataset", 10);
            throw new AssertionError("no error");
        } catch (CreatorException e) {
            if (!e.getMessage().equals("Failed: InvalidFeature")) throw new AssertionError(e.getMessage());
        }
        assertCleanVerdict("");
    }

    static void heldTimesOut() throws Exception {
        use("scenarios/examples/held-job.yaml");
        try {
            createTileset("my-dataset", 0.3);
            throw new AssertionError("no timeout");
        } catch (CreatorException e) {
            if (!e.getMessage().equals("timed out: still Running")) throw new AssertionError(e.getMessage());
        }
        assertCleanVerdict("unfinished"); // it gave up, as it should
    }

    static void steeredFailure() throws Exception {
        use("scenarios/examples/held-job.yaml");
        CompletableFuture<String> outcome = CompletableFuture.supplyAsync(() -> {
            try {
                return createTileset("my-dataset", 10);
            } catch (Exception e) {
                throw new RuntimeException(e.getMessage());
            }
        });
        String id = null;
        for (int i = 0; i < 200 && id == null; i++) {
            id = field(control("GET", "operations", null), "id");
            if (id == null) Thread.sleep(10);
        }
        control("POST", "operations/" + id + "/fail", "{\"error\": {\"code\": \"NoGeometry\", \"message\": \"No geometry.\"}}");
        String message = expectFailure(outcome);
        if (!message.equals("Failed: NoGeometry")) throw new AssertionError(message);
        assertCleanVerdict("");
    }
}
