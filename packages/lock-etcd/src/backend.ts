import {
  checkLockCall,
  type LockBackend,
  type LockBackendCapabilities,
  OutboxError,
  OutboxErrorCode,
} from "@outbox/core";
import type { Etcd3, IKeyValue, KVClient, LeaseClient } from "etcd3";

export interface EtcdLockBackendOptions {
  /**
   * The caller's etcd3 client. The backend never closes it. It calls etcd's KV and Lease services
   * directly (`client.kv`, `client.leaseClient`), so a prefix from `client.namespace()` does not
   * apply: use `keyPrefix`.
   */
  client: Etcd3;
  /** Prefix of every key. Default "outbox/lock/". The lock key of `name` is `<prefix><name>`. */
  keyPrefix?: string;
  /**
   * Longest wait for one lock operation (all of its etcd calls together), as a gRPC deadline
   * plus a local timer. Past it the operation fails with OUTBOX_LOCK_UNAVAILABLE ("could not
   * tell": the lock helper treats it as not held). Default: a third of the lock's TTL (the
   * renewal interval) for acquire/renew, 5 s for release.
   */
  timeoutMs?: number;
  /**
   * Whether fencing tokens keep increasing across a restart of etcd, declared as
   * `capabilities.tokensSurviveRestart`. Tokens are etcd revisions, which survive a restart on
   * the same data (etcd's normal operation). Declare `false` for an etcd whose data may be
   * lost or rolled back (an in-memory/tmpfs data dir, a cluster recreated from scratch or
   * restored from a snapshot): its revisions restart lower. Default true.
   */
  tokensSurviveRestart?: boolean;
}

/** A `LockBackend` on etcd, plus the key names it uses (for monitoring and tests). */
export interface EtcdLockBackend extends LockBackend {
  readonly keyPrefix: string;
  /** The key holding the holder's id, attached to the grant's lease, while the lock is held. */
  lockKey(name: string): string;
  /** Marks the backend closed (later calls fail with OUTBOX_CLOSED). Never closes the caller's client. */
  close(): Promise<void>;
}

const defaultReleaseTimeoutMs = 5_000;
/** DistributedLock renews every ttl/3: a call should not outlive the next renewal. */
const renewalInterval = (ttlMs: number) => Math.max(1, Math.floor(ttlMs / 3));

/** etcd leases have whole-second TTLs; rounding up only makes the server hold longer (the safe side). */
const leaseSeconds = (ttlMs: number) => Math.max(1, Math.ceil(ttlMs / 1_000));

interface Deadline {
  /** Absolute deadline for gRPC calls (ms since the epoch). */
  readonly at: number;
  /** Set when the operation already failed with a timeout: late successes must be undone. */
  abandoned: boolean;
}

/**
 * Leader lock on etcd:
 * - acquire: read the key; if free, grant a lease of the TTL and, in one transaction,
 *   `create_revision(key) == 0 -> put(key, holder, lease)`. The fencing token is the revision
 *   of that put (etcd's global, persistent revision counter);
 * - renew: keep the key's lease alive, only while the key holds our holder id;
 * - release: compare-and-delete (holder id and, when known, the grant's revision), then revoke
 *   the lease.
 * The same holder acquiring again gets a fresh, higher token and a fresh lease (like the reference
 * backend), so a relay whose reply got lost can take its own lock back at once.
 */
class EtcdLock implements EtcdLockBackend {
  readonly capabilities: LockBackendCapabilities;
  readonly keyPrefix: string;
  readonly #kv: KVClient;
  readonly #leases: LeaseClient;
  readonly #timeoutMs: number | undefined;
  /** The revision of the last grant this backend handed to each (name, holder), so release deletes only that grant. */
  readonly #tokens = new Map<string, string>();
  #closed = false;

  constructor(options: EtcdLockBackendOptions) {
    const client = options?.client as Partial<Etcd3> | undefined;
    if (typeof client?.kv?.txn !== "function" || typeof client.leaseClient?.leaseGrant !== "function") {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "createEtcdLockBackend needs an etcd3 client (new Etcd3())",
      );
    }
    if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, `timeoutMs must be positive, got ${options.timeoutMs}`);
    }
    if (options.keyPrefix !== undefined && typeof options.keyPrefix !== "string") {
      throw new OutboxError(OutboxErrorCode.InvalidOptions, "keyPrefix must be a string");
    }
    this.#kv = client.kv;
    this.#leases = client.leaseClient;
    this.keyPrefix = options.keyPrefix ?? "outbox/lock/";
    this.#timeoutMs = options.timeoutMs;
    this.capabilities = { tokensSurviveRestart: options.tokensSurviveRestart ?? true };
  }

  lockKey(name: string): string {
    return `${this.keyPrefix}${name}`;
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<bigint | null> {
    this.#check(name, holder, ttlMs);
    return this.#run("acquire", renewalInterval(ttlMs), async (deadline) => {
      const key = Buffer.from(this.lockKey(name));
      const current = await this.#get(key, deadline);
      // Held by someone else: one read, no lease granted (followers poll this every cycle).
      if (current && current.value.toString() !== holder) return null;
      const granted = await this.#leases.leaseGrant({ TTL: leaseSeconds(ttlMs) }, { deadline: deadline.at });
      const lease = granted.ID;
      let put = false;
      try {
        const txn = await this.#kv.txn(
          {
            // Free: nobody created the key. Ours: unchanged since we read it (re-acquire by the same holder).
            compare: [
              current
                ? { key, target: "Mod", result: "Equal", mod_revision: current.mod_revision }
                : { key, target: "Create", result: "Equal", create_revision: 0 },
            ],
            success: [{ request_put: { key, value: Buffer.from(holder), lease } }],
            failure: [],
          },
          { deadline: deadline.at },
        );
        // Past the deadline the caller has been told "not acquired": undo a late success.
        put = txn.succeeded && !deadline.abandoned;
        if (!put) return null;
        // The revision of the transaction that wrote the key: greater than every earlier write
        // in the cluster, so greater than every token handed out before.
        const token = txn.header.revision;
        this.#tokens.set(`${name}\0${holder}`, token);
        if (current && current.lease !== "0") this.#revokeLater(current.lease);
        return BigInt(token);
      } finally {
        // A lease that ended up holding nothing is revoked. That includes a transaction whose
        // reply was lost: had it applied, revoking deletes the key, which is what "not
        // acquired" must mean.
        if (!put) this.#revokeLater(lease);
      }
    });
  }

  async renew(name: string, holder: string, ttlMs: number): Promise<boolean> {
    this.#check(name, holder, ttlMs);
    return this.#run("renew", renewalInterval(ttlMs), async (deadline) => {
      const current = await this.#get(Buffer.from(this.lockKey(name)), deadline);
      if (!current || current.value.toString() !== holder || current.lease === "0") return false;
      const ttlSeconds = await this.#keepAlive(current.lease, deadline);
      // 0: the lease expired or was revoked (the key is gone with it). A lease shorter than the
      // TTL asked for now would let the server drop the key before the holder's validity ends:
      // refuse, and the holder re-acquires with a lease of the right length.
      return ttlSeconds > 0 && ttlSeconds * 1_000 >= ttlMs;
    });
  }

  async release(name: string, holder: string): Promise<boolean> {
    this.#check(name, holder);
    const id = `${name}\0${holder}`;
    const token = this.#tokens.get(id);
    this.#tokens.delete(id);
    return this.#run("release", defaultReleaseTimeoutMs, async (deadline) => {
      const key = Buffer.from(this.lockKey(name));
      const txn = await this.#kv.txn(
        {
          compare: [
            { key, target: "Value", result: "Equal", value: Buffer.from(holder) },
            // Only the grant this backend handed out: a release delayed in the network cannot
            // delete the same holder's newer grant.
            ...(token ? [{ key, target: "Mod" as const, result: "Equal" as const, mod_revision: token }] : []),
          ],
          success: [{ request_delete_range: { key, prev_kv: true } }],
          failure: [],
        },
        { deadline: deadline.at },
      );
      if (!txn.succeeded) return false;
      const lease = txn.responses[0]?.response_delete_range?.prev_kvs[0]?.lease;
      if (lease && lease !== "0") {
        // The key is gone already; the lease holds nothing more. If etcd does not answer now,
        // the lease simply runs out.
        await this.#leases.leaseRevoke({ ID: lease }, { deadline: deadline.at }).catch(() => undefined);
      }
      return true;
    });
  }

  /** Marks the backend closed. The etcd3 client belongs to the caller and stays open. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  #check(name: string, holder: string, ttlMs?: number): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the etcd lock backend is closed");
    checkLockCall(name, holder, ttlMs);
  }

  /** A linearizable read of the lock key (etcd's default): never a stale follower's view. */
  async #get(key: Buffer, deadline: Deadline): Promise<IKeyValue | null> {
    const range = await this.#kv.range({ key }, { deadline: deadline.at });
    return range.kvs[0] ?? null;
  }

  /** One LeaseKeepAlive round trip on its own stream; resolves with the lease's TTL in seconds (0: gone). */
  async #keepAlive(lease: string, deadline: Deadline): Promise<number> {
    const stream = await this.#leases.leaseKeepAlive({ deadline: deadline.at });
    try {
      return await new Promise<number>((resolve, reject) => {
        stream.on("data", (reply) => resolve(Number(reply.TTL)));
        stream.on("error", reject);
        stream.on("end", () => reject(new Error("the keepalive stream ended without a reply")));
        stream.write({ ID: lease });
      });
    } finally {
      // End our side: etcd closes the stream. (cancel() on a still-writable stream would make
      // etcd3 mark the host failed and reset its channels.) Late events land on settled promises.
      stream.end();
    }
  }

  /** Best-effort revoke of a lease that holds nothing of ours (any more). Never awaited. */
  #revokeLater(lease: string): void {
    void this.#leases
      .leaseRevoke({ ID: lease }, { deadline: Date.now() + defaultReleaseTimeoutMs })
      .catch(() => undefined);
  }

  /**
   * Runs one lock operation under one deadline: the gRPC deadline of each call, and a local timer
   * in case the client's own policies (retries, a circuit breaker) do not honour it. Any failure
   * becomes OUTBOX_LOCK_UNAVAILABLE.
   */
  async #run<T>(what: string, defaultTimeoutMs: number, work: (deadline: Deadline) => Promise<T>): Promise<T> {
    const timeoutMs = this.#timeoutMs ?? defaultTimeoutMs;
    const deadline: Deadline = { at: Date.now() + timeoutMs, abandoned: false };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        deadline.abandoned = true;
        reject(new OutboxError(OutboxErrorCode.LockUnavailable, `etcd did not answer ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([work(deadline), timeout]);
    } catch (error) {
      if (OutboxError.is(error)) throw error;
      throw new OutboxError(OutboxErrorCode.LockUnavailable, `etcd lock ${what} failed`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Creates an etcd lock backend for `OutboxRelay`'s `leader` option or `DistributedLock`. */
export function createEtcdLockBackend(options: EtcdLockBackendOptions): EtcdLockBackend {
  return new EtcdLock(options);
}
