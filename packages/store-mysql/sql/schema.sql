-- @outbox/store-mysql schema v1 for `outbox`. Idempotent: safe to run again.
-- MySQL 8.0+ / MariaDB 10.6+ (SKIP LOCKED), InnoDB, utf8mb4.

CREATE TABLE IF NOT EXISTS `outbox` (
  id              BIGINT        NOT NULL AUTO_INCREMENT,
  topic           VARCHAR(1024) NOT NULL,
  entry_key       VARCHAR(1024) NULL,
  -- First 16 bytes of SHA-256 over the key's UTF-8 bytes, computed by the store: the index key of
  -- the key (a utf8mb4 VARCHAR(1024) is too long for an index). A collision only makes two keys
  -- share one order, never breaks either.
  key_hash        BINARY(16)    NULL,
  payload         LONGBLOB      NOT NULL,
  -- JSON text as UTF-8 bytes: byte for byte what was enqueued (MySQL's JSON type normalises).
  headers         LONGBLOB      NOT NULL,
  idempotency_key VARCHAR(1024) NULL,
  -- Times are milliseconds since the Unix epoch from the store's clock: no time zone anywhere.
  created_at      BIGINT        NOT NULL,
  available_at    BIGINT        NOT NULL,
  -- 0 pending, 1 published, 2 dead.
  status          TINYINT       NOT NULL DEFAULT 0,
  attempts        INT           NOT NULL DEFAULT 0,
  last_error      TEXT          NULL,
  claimed_by      VARCHAR(1024) NULL,
  lease_until     BIGINT        NULL,
  -- The fence the lease was taken under: a claim with a newer token of that lock takes it over.
  lease_lock      VARCHAR(255)  NULL,
  lease_token     DECIMAL(65,0) NULL,
  settled_at      BIGINT        NULL,
  PRIMARY KEY (id),
  -- Claim window and dead letters: entries of one status in id order.
  KEY outbox_pending_idx (status, id),
  -- Key heads and runs (ordered range scans from a cursor) and keyless entries.
  KEY outbox_key_idx (status, key_hash, id),
  -- Retention: settled entries by settle time (pending ones have none).
  KEY outbox_settled_idx (settled_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin ROW_FORMAT=DYNAMIC;

CREATE TABLE IF NOT EXISTS `outbox_fence` (
  -- Newest fencing token seen per lock name; claims and settles carrying an older one are refused.
  lock_name VARCHAR(255)  NOT NULL,
  token     DECIMAL(65,0) NOT NULL,
  PRIMARY KEY (lock_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
