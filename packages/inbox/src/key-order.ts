/**
 * Runs work one call at a time per key, in call order; a null key runs at once. A call starts
 * once the key's previous one settled, whatever its outcome. The inbox uses it, and so do the
 * broker helpers that must see a key's deliveries in order before they reach the inbox.
 */
export class KeyOrder {
  /** Per key: the settled-or-not end of its chain. */
  readonly #tails = new Map<string, Promise<unknown>>();

  run<T>(key: string | null, work: () => Promise<T>): Promise<T> {
    if (key === null) return work();
    const previous = this.#tails.get(key);
    const call = previous ? previous.then(work, work) : work();
    const tail = call.catch(() => undefined);
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return call;
  }
}
