// A client of the seed LRO (Azure Maps Creator tilesets) in Java 17's java.net.http.HttpClient, written as
// a user outside this project would: POST /tilesets -> 202 + Location; poll honouring retry-after-ms /
// x-ms-retry-after-ms / Retry-After (the Azure SDK for Java's order); retry 429/5xx and resets; stop at
// Succeeded/Failed; GET the resourceLocation. --naive ignores every delay.
// Usage: java LroClient.java BASE_URL DATASET_ID [--naive]; prints one line: the outcome.
// HTTPS: LRO_CA_FILE=$(replay-proxy ca) (a PEM to trust); forward proxy: LRO_PROXY=host:port.
import java.io.FileInputStream;
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class LroClient {
    static final int MAX_REQUESTS = 50;
    static boolean naive;
    static int requests = 0;
    static double lastDelay = 0.05;
    static HttpClient http;

    record Answer(HttpResponse<String> res, Double delay) {}

    public static void main(String[] args) throws Exception {
        String base = args[0];
        String datasetId = args[1];
        naive = args.length > 2 && args[2].equals("--naive");
        HttpClient.Builder builder = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10));
        String ca = System.getenv("LRO_CA_FILE");
        if (ca != null) builder.sslContext(trusting(ca));
        String proxy = System.getenv("LRO_PROXY");
        if (proxy != null) {
            String[] hp = proxy.split(":");
            builder.proxy(ProxySelector.of(new InetSocketAddress(hp[0], Integer.parseInt(hp[1]))));
        }
        http = builder.build();
        try {
            System.out.println(run(base, datasetId));
        } catch (Exception e) {
            System.err.println("LroClient: " + e);
            System.exit(1);
        }
    }

    static SSLContext trusting(String pem) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (FileInputStream in = new FileInputStream(pem)) {
            store.setCertificateEntry("replay-proxy", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }

    static String run(String base, String datasetId) throws Exception {
        String startUrl = base + "/tilesets?api-version=2.0&datasetId=" + URLEncoder.encode(datasetId, StandardCharsets.UTF_8);
        Answer start = send("POST", startUrl);
        if (start.res.statusCode() != 202) throw new IllegalStateException("start: HTTP " + start.res.statusCode() + ": " + start.res.body());
        URI location = URI.create(base + "/").resolve(start.res.headers().firstValue("location").orElseThrow());
        sleep(start.delay == null ? 0 : start.delay);
        while (true) {
            Answer poll = send("GET", location.toString());
            if (poll.res.statusCode() >= 400) throw new IllegalStateException("poll: HTTP " + poll.res.statusCode() + ": " + poll.res.body());
            String body = poll.res.body();
            String status = field(body, "status");
            if ("Failed".equals(status)) {
                return "Failed " + field(body, "code") + " (" + requests + " requests)";
            }
            if ("Succeeded".equals(status)) {
                String resourceLocation = field(body, "resourceLocation");
                String resourceId = "-";
                if (resourceLocation != null) {
                    Answer got = send("GET", URI.create(base + "/").resolve(resourceLocation).toString());
                    resourceId = field(got.res.body(), "tilesetId");
                }
                return "Succeeded " + resourceId + " (" + requests + " requests)";
            }
            sleep(poll.delay == null ? 1 : poll.delay);
        }
    }

    /** One logical request: retried after a reset, a 429 or a 5xx, waiting what the answer said. */
    static Answer send(String method, String url) throws Exception {
        for (int attempt = 1; ; attempt++) {
            if (++requests > MAX_REQUESTS) throw new IllegalStateException("gave up after " + MAX_REQUESTS + " requests");
            HttpRequest req = HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10))
                    .method(method, HttpRequest.BodyPublishers.noBody()).build();
            HttpResponse<String> res;
            try {
                res = http.send(req, HttpResponse.BodyHandlers.ofString());
            } catch (java.io.IOException e) {
                if (attempt >= 5) throw e;
                sleep(lastDelay);
                continue;
            }
            Double delay = delayOf(res);
            if (delay != null) lastDelay = delay;
            if ((res.statusCode() == 429 || res.statusCode() >= 500) && attempt < 5) {
                sleep(delay == null ? 1 : delay);
                continue;
            }
            return new Answer(res, delay);
        }
    }

    static Double delayOf(HttpResponse<?> res) {
        for (String name : new String[] {"retry-after-ms", "x-ms-retry-after-ms"}) {
            Optional<String> v = res.headers().firstValue(name);
            if (v.isPresent() && v.get().trim().matches("\\d+(\\.\\d+)?")) return Double.parseDouble(v.get().trim()) / 1000;
        }
        Optional<String> ra = res.headers().firstValue("retry-after");
        if (ra.isEmpty()) return null;
        String v = ra.get().trim();
        if (v.matches("\\d+")) return Double.parseDouble(v);
        try {
            ZonedDateTime when = ZonedDateTime.parse(v, DateTimeFormatter.RFC_1123_DATE_TIME);
            return Math.max(0, (when.toInstant().toEpochMilli() - System.currentTimeMillis()) / 1000.0);
        } catch (Exception e) {
            return null;
        }
    }

    /** The first string value of "name" in a JSON text (enough for this API's flat answers). */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
        return m.find() ? m.group(1) : null;
    }

    static void sleep(double seconds) throws InterruptedException {
        if (!naive) Thread.sleep(Math.round(seconds * 1000));
    }
}
