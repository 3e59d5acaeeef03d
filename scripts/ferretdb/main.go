// Command ferretdb-outbox runs FerretDB (embedded, PostgreSQL backend) for the
// @outbox/store-mongodb integration tests and benchmarks. Built and started by scripts/services.sh.
//
//	ferretdb-outbox -listen 127.0.0.1:27017 -postgresql-url postgres://postgres:postgres@127.0.0.1:5432/ferretdb
//	ferretdb-outbox -listen 127.0.0.1:27017 -probe   # exit 0 when the server answers a ping
//
// The PostgreSQL backend, not SQLite: FerretDB's SQLite backend serialises writers on one
// database file (SQLITE_BUSY under concurrent relays). Each MongoDB database becomes a schema
// of the PostgreSQL database in -postgresql-url, and createIndexes creates PostgreSQL indexes.
//
// It stops cleanly on SIGTERM/SIGINT.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// probe sends {ping: 1, $db: "admin"} as an OP_MSG and checks that the reply says ok: 1.0.
func probe(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))

	var doc bytes.Buffer
	doc.Write([]byte{0, 0, 0, 0})                  // document length, patched below
	doc.Write([]byte{0x10, 'p', 'i', 'n', 'g', 0}) // int32 "ping"
	doc.Write([]byte{1, 0, 0, 0})                  // 1
	doc.Write([]byte{0x02, '$', 'd', 'b', 0})      // string "$db"
	doc.Write([]byte{6, 0, 0, 0, 'a', 'd', 'm', 'i', 'n', 0})
	doc.WriteByte(0)
	body := doc.Bytes()
	binary.LittleEndian.PutUint32(body, uint32(len(body)))

	msg := make([]byte, 16+4+1, 16+4+1+len(body))
	binary.LittleEndian.PutUint32(msg[0:], uint32(cap(msg)))
	binary.LittleEndian.PutUint32(msg[4:], 1)     // requestID
	binary.LittleEndian.PutUint32(msg[12:], 2013) // OP_MSG
	msg = append(msg, body...)
	if _, err := conn.Write(msg); err != nil {
		return err
	}

	header := make([]byte, 16)
	if _, err := io.ReadFull(conn, header); err != nil {
		return err
	}
	size := binary.LittleEndian.Uint32(header)
	if size < 16 || size > 1<<20 || binary.LittleEndian.Uint32(header[12:]) != 2013 {
		return io.ErrUnexpectedEOF
	}
	reply := make([]byte, size-16)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return err
	}
	// ok: 1.0 as a BSON double (type 0x01, "ok", 1.0 little-endian).
	okDouble := []byte{0x01, 'o', 'k', 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f}
	if !bytes.Contains(reply, okDouble) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	pgURL := flag.String("postgresql-url", "", "PostgreSQL database FerretDB stores its data in (must exist)")
	debug := flag.Bool("debug", false, "debug logging")
	probeOnly := flag.Bool("probe", false, "only check that a server on -listen answers a ping")
	flag.Parse()
	if *probeOnly {
		if err := probe(*listen); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *pgURL == "" {
		log.Fatal("-postgresql-url is required")
	}

	level := slog.LevelWarn
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       "postgresql",
		PostgreSQLURL: *pgURL,
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The URL carries the password: log only where the data goes.
	logger.Warn("ferretdb-outbox listening", "addr", *listen, "backend", "postgresql")
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
