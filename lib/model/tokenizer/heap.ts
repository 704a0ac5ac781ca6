/**
 * The work queue of the merge loops: a binary min-heap of candidate merges (bigrams) ordered
 * by `key` ascending, then by `left` ascending. SPM pushes key = -score (highest score first),
 * BPE pushes key = merge rank (lowest rank first); both break ties by the leftmost pair, as
 * llama.cpp's comparators do. Entries live in parallel typed arrays, so a tokenization
 * allocates nothing per bigram; one heap is reused across calls.
 */
export class BigramHeap {
  private key = new Float64Array(64);
  private left = new Int32Array(64);
  private right = new Int32Array(64);
  private size_ = new Int32Array(64);
  private n = 0;

  get length(): number {
    return this.n;
  }

  clear(): void {
    this.n = 0;
  }

  private grow(): void {
    const cap = this.key.length * 2;
    const k = new Float64Array(cap);
    k.set(this.key);
    this.key = k;
    const l = new Int32Array(cap);
    l.set(this.left);
    this.left = l;
    const r = new Int32Array(cap);
    r.set(this.right);
    this.right = r;
    const s = new Int32Array(cap);
    s.set(this.size_);
    this.size_ = s;
  }

  private less(i: number, j: number): boolean {
    const ki = this.key[i];
    const kj = this.key[j];
    return ki < kj || (ki === kj && this.left[i] < this.left[j]);
  }

  private swap(i: number, j: number): void {
    const { key, left, right, size_ } = this;
    let t = key[i];
    key[i] = key[j];
    key[j] = t;
    t = left[i];
    left[i] = left[j];
    left[j] = t;
    t = right[i];
    right[i] = right[j];
    right[j] = t;
    t = size_[i];
    size_[i] = size_[j];
    size_[j] = t;
  }

  push(key: number, left: number, right: number, size: number): void {
    if (this.n === this.key.length) this.grow();
    let i = this.n++;
    this.key[i] = key;
    this.left[i] = left;
    this.right[i] = right;
    this.size_[i] = size;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  // The top entry, valid until the next push/pop.
  topLeft(): number {
    return this.left[0];
  }
  topRight(): number {
    return this.right[0];
  }
  topSize(): number {
    return this.size_[0];
  }

  pop(): void {
    const last = --this.n;
    if (last === 0) return;
    this.swap(0, last);
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= last) break;
      const r = l + 1;
      const c = r < last && this.less(r, l) ? r : l;
      if (!this.less(c, i)) break;
      this.swap(i, c);
      i = c;
    }
  }
}
