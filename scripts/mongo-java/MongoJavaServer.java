// Runs de.bwaldvogel:mongo-java-server (in memory, oplog enabled: change streams) for the
// @outbox/store-mongodb integration tests. Compiled and started by scripts/services.sh.
//
//   java -cp '<libs>/*:<classes>' MongoJavaServer -listen 127.0.0.1:27018
//   java -cp '<libs>/*:<classes>' MongoJavaServer -listen 127.0.0.1:27018 -probe   # exit 0 when a ping is answered
//
// It stops on SIGTERM (the JVM's shutdown hook closes the server).
//
// The oplog (what change streams read) is a plain in-memory collection there, never trimmed, and
// every getMore of a change stream scans and sorts all of it: under a steady producer (the chaos
// run: 220 entries/s, three relays) the heap filled and getMores slowed without bound. So entries
// older than -oplog-retain-seconds (default 15) are deleted every second, as a capped oplog would
// drop them. A change stream that falls further behind than that misses events; the store treats
// change-stream events as wake-ups only and polls anyway.

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.oplog.NoopOplog;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

public final class MongoJavaServer {
  private MongoJavaServer() {}

  static final MongoVersion REPORTED_VERSION = new MongoVersion() {
    @Override
    public List<Integer> getVersionArray() {
      return List.of(4, 4, 0);
    }

    @Override
    public int getWireVersion() {
      return 9;
    }
  };

  public static void main(String[] args) throws Exception {
    String listen = "127.0.0.1:27018";
    boolean probeOnly = false;
    long oplogRetainSeconds = 15;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "-listen" -> listen = args[++i];
        case "-probe" -> probeOnly = true;
        case "-oplog-retain-seconds" -> oplogRetainSeconds = Long.parseLong(args[++i]);
        default -> {
          System.err.println("unknown argument " + args[i]);
          System.exit(2);
        }
      }
    }
    int colon = listen.lastIndexOf(':');
    String host = listen.substring(0, colon);
    int port = Integer.parseInt(listen.substring(colon + 1));
    if (probeOnly) {
      System.exit(probe(host, port) ? 0 : 1);
    }
    MemoryBackend backend = new MemoryBackend();
    // The version it reports is only reported (hello, buildInfo); the behaviour is the same. Its
    // default says wire version 8, and the mongodb 7.x driver refuses servers below 9 (MongoDB
    // 4.4), so it reports 4.4 / wire version 9: the oldest server the current drivers accept.
    backend.version(REPORTED_VERSION);
    backend.enableOplog();
    MongoServer server = new MongoServer(backend);
    server.bind(host, port);
    // enableOplog() created local.oplog.rs; its deleteDocuments holds the collection's lock, as the
    // server's own writes do, and records nothing (the trimming itself is not an event).
    MongoCollection<?> oplog = backend.resolveDatabase("local").resolveCollection("oplog.rs", true);
    ScheduledExecutorService trimmer = Executors.newSingleThreadScheduledExecutor(runnable -> {
      Thread thread = new Thread(runnable, "oplog-trimmer");
      thread.setDaemon(true);
      return thread;
    });
    long retainSeconds = oplogRetainSeconds;
    trimmer.scheduleWithFixedDelay(() -> {
      try {
        BsonTimestamp oldest = new BsonTimestamp(Instant.now().minusSeconds(retainSeconds), 0);
        oplog.deleteDocuments(new Document("ts", new Document("$lt", oldest)), 0, NoopOplog.get());
      } catch (RuntimeException e) {
        System.err.println("oplog trim failed: " + e);
      }
    }, 1, 1, TimeUnit.SECONDS);
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      trimmer.shutdownNow();
      server.shutdownNow();
      stopped.countDown();
    }));
    System.err.println("mongo-java-server listening on " + server.getLocalAddress() + " (in memory, oplog enabled, kept "
        + oplogRetainSeconds + " s)");
    stopped.await();
  }

  /** Sends {ping: 1, $db: "admin"} as an OP_MSG; true when the reply carries ok: 1.0. */
  static boolean probe(String host, int port) {
    try (Socket socket = new Socket()) {
      socket.connect(new InetSocketAddress(host, port), 2_000);
      socket.setSoTimeout(3_000);
      ByteArrayOutputStream doc = new ByteArrayOutputStream();
      doc.write(new byte[] {0, 0, 0, 0}); // document length, patched below
      doc.write(new byte[] {0x10, 'p', 'i', 'n', 'g', 0, 1, 0, 0, 0}); // int32 ping: 1
      doc.write(new byte[] {0x02, '$', 'd', 'b', 0, 6, 0, 0, 0});
      doc.write("admin".getBytes(StandardCharsets.US_ASCII));
      doc.write(new byte[] {0, 0}); // end of the string, end of the document
      byte[] body = doc.toByteArray();
      ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN).putInt(0, body.length);
      ByteBuffer msg = ByteBuffer.allocate(16 + 4 + 1 + body.length).order(ByteOrder.LITTLE_ENDIAN);
      msg.putInt(msg.capacity()).putInt(1).putInt(0).putInt(2013); // length, requestID, responseTo, OP_MSG
      msg.putInt(0).put((byte) 0).put(body); // flag bits, section kind 0
      OutputStream out = socket.getOutputStream();
      out.write(msg.array());
      out.flush();
      DataInputStream in = new DataInputStream(socket.getInputStream());
      byte[] header = new byte[16];
      in.readFully(header);
      ByteBuffer h = ByteBuffer.wrap(header).order(ByteOrder.LITTLE_ENDIAN);
      int size = h.getInt(0);
      if (size < 16 || size > (1 << 20) || h.getInt(12) != 2013) return false;
      byte[] reply = new byte[size - 16];
      in.readFully(reply);
      // ok: 1.0 as a BSON double (type 0x01, "ok", 1.0 little-endian).
      byte[] ok = {0x01, 'o', 'k', 0, 0, 0, 0, 0, 0, 0, (byte) 0xf0, 0x3f};
      return indexOf(reply, ok) >= 0;
    } catch (IOException e) {
      return false;
    }
  }

  static int indexOf(byte[] haystack, byte[] needle) {
    outer:
    for (int i = 0; i + needle.length <= haystack.length; i++) {
      for (int j = 0; j < needle.length; j++) if (haystack[i + j] != needle[j]) continue outer;
      return i;
    }
    return -1;
  }
}
