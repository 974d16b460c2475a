// A minimal HTTP server in Java for the Nimbus custom runtime: it serves on the port given
// as its first argument (Nimbus passes $PORT) and answers every request with JSON.
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

public class Server {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args.length > 0 ? args[0] : System.getenv("PORT"));
        AtomicLong hits = new AtomicLong();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 128);
        server.createContext("/", exchange -> {
            byte[] in = exchange.getRequestBody().readAllBytes();
            String body = String.format(
                "{\"runtime\":\"java\",\"method\":\"%s\",\"path\":\"%s\",\"received\":%d,\"hits\":%d}",
                exchange.getRequestMethod(), exchange.getRequestURI().getPath(), in.length, hits.incrementAndGet());
            byte[] out = body.getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("content-type", "application/json");
            exchange.sendResponseHeaders(200, out.length);
            try (OutputStream os = exchange.getResponseBody()) {
                os.write(out);
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("java server listening on " + port);
    }
}
