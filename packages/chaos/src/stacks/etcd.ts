import { etcdHosts } from "@outbox/test-support/services";
import { Etcd3 } from "etcd3";

/** An etcd3 client as the lock-etcd README's quick start makes it. */
export function etcdClient(): Etcd3 {
  return new Etcd3({ hosts: etcdHosts, dialTimeout: 1_000 });
}
