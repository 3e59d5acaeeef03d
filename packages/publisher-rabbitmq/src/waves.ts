/**
 * The send plan that keeps the run contract on a confirm channel.
 *
 * A channel delivers in order, but a nack or return of one message does not stop the next: if a
 * key's whole run were written at once, a3 could reach a queue after a2 failed. So a publish call
 * goes in waves: wave i holds the i-th entry of every key (keyless entries all go in wave 0),
 * written together, confirms awaited together. A key whose entry failed drops out of the later
 * waves (its entries are held back). A batch of distinct keys is one wave (one confirm round
 * trip); a run of n entries of one key costs n round trips.
 */
export function planWaves(entries: ReadonlyArray<{ readonly key: string | null }>): number[][] {
  const waves: number[][] = [[]];
  const depth = new Map<string, number>();
  entries.forEach((entry, index) => {
    let wave = 0;
    if (entry.key !== null) {
      wave = depth.get(entry.key) ?? 0;
      depth.set(entry.key, wave + 1);
    }
    let target = waves[wave];
    if (!target) {
      target = [];
      waves[wave] = target;
    }
    target.push(index);
  });
  return waves[0]?.length === 0 && waves.length === 1 ? [] : waves;
}
