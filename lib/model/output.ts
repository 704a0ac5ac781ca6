/**
 * Turns one request's sampled tokens into output chunks: streaming detokenization, stop
 * strings (text held back until disambiguated), end-of-generation tokens and the length
 * limit. Shared by Model.generate and the engine so both finish requests the same way.
 */
import { SampledToken, StopMatcher } from './sampler';
import { Tokenizer } from './tokenizer';

export type FinishReason = 'stop' | 'length' | 'eos';

export interface GenerateChunk {
  token: number;
  /** Text that became final with this token (may be '' while a UTF-8 character or a possible stop string is pending). */
  text: string;
  logprob: number;
  top?: { token: number; logprob: number }[];
  /** Set on the last chunk. */
  finishReason?: FinishReason;
}

export interface OutputOptions {
  /** Undefined: token ids only (text is ''), eos never fires. */
  tokenizer?: Pick<Tokenizer, 'createStream' | 'isEog'>;
  stop?: readonly string[];
  ignoreEos?: boolean;
  /** Most tokens to generate. */
  maxTokens: number;
  /** Total length (prompt + outputs) at which generation stops. */
  maxLength: number;
  promptLength: number;
}

export class OutputStream {
  private readonly o: OutputOptions;
  private readonly stops: StopMatcher;
  private readonly detok: ReturnType<Tokenizer['createStream']> | undefined;
  private count = 0;
  private finished: FinishReason | undefined;

  constructor(o: OutputOptions) {
    this.o = o;
    this.stops = new StopMatcher(o.stop ?? []);
    this.detok = o.tokenizer?.createStream();
  }

  /** Set once a chunk carried a finish reason. */
  get finishReason(): FinishReason | undefined {
    return this.finished;
  }

  /**
   * Whether `token`, pushed as the `ahead`-th token from now (1 = the next), would end the
   * request by EOS or length. Stop strings need the text and are found by push() only. For
   * speculative verification: stop accepting drafts past the end.
   */
  endsWith(token: number, ahead: number): boolean {
    const o = this.o;
    if (o.tokenizer && !o.ignoreEos && o.tokenizer.isEog(token)) return true;
    const n = this.count + ahead;
    return n >= o.maxTokens || o.promptLength + n >= o.maxLength;
  }

  /** The chunk for the next sampled token (with finishReason when it ends the request). */
  push(s: SampledToken): GenerateChunk {
    const o = this.o;
    const chunk: GenerateChunk = { token: s.token, text: '', logprob: s.logprob };
    if (s.top) chunk.top = s.top;
    this.count++;
    let finish: FinishReason | undefined;
    if (o.tokenizer && o.tokenizer.isEog(s.token) && !o.ignoreEos) {
      finish = 'eos';
      chunk.text = this.stops.push(this.detok!.flush()).emit + this.stops.flush();
    } else {
      const r = this.stops.push(this.detok ? this.detok.push(s.token) : '');
      chunk.text = r.emit;
      if (r.stopped) finish = 'stop';
      else if (this.count >= o.maxTokens || o.promptLength + this.count >= o.maxLength) {
        finish = 'length';
        chunk.text +=
          this.stops.push(this.detok ? this.detok.flush() : '').emit + this.stops.flush();
      }
    }
    if (finish) {
      chunk.finishReason = finish;
      this.finished = finish;
    }
    return chunk;
  }
}
