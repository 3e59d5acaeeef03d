/** The order of `pendingSummary`'s hot and blocked keys: most pending first, then by key. */
export function mostPendingFirst(a: { key: string; pending: number }, b: { key: string; pending: number }): number {
  return b.pending - a.pending || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}
