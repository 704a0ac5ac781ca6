/**
 * A small built-in English + code corpus for training synthetic vocabularies (synthetic.ts),
 * so that generated test models tokenize ordinary text into real multi-character pieces.
 * Original text written for this project. It contains none of the special-token texts of
 * the synthetic vocabularies (<s>, </s>, <unk>, <0x..>, <|...|>), so no trained piece collides
 * with one (the trainers also skip any piece that would).
 */
export const ENGLISH_CORPUS = `Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree. She wanted to play with it, but it was too high. Lily asked her mom for help, and her mom smiled and said, "Let's find a long stick." Together they got the ball down, and Lily was very happy. She thanked her mom and ran back to her friends.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. Every morning the baker opens his shop at six o'clock, and the smell of fresh bread fills the whole street. People come from all over the town to buy his rolls, cakes and pies.
In the beginning there was only the sea and the sky. Then the wind started to blow, the waves grew taller, and the first islands rose out of the water. Birds came from far away and built their nests on the rocks. Years later, fishermen arrived in small wooden boats and made the islands their home.
Machine learning models learn patterns from data. A language model predicts the next word in a sentence, given all the words that came before it. Training such a model needs a large amount of text, a lot of computation, and careful evaluation. The model is then used to generate text, answer questions, summarize documents, translate between languages, and write code.
It's important to remember that we're all learning. They've worked hard, and they'll keep going until the job is done. I'm sure you'd agree that it isn't easy, but we don't give up. What do you think? Is it worth it? Yes! Absolutely.
The weather today is sunny with a light breeze from the west. Temperatures will reach 24 degrees in the afternoon and drop to 12 degrees at night. There is a small chance of rain on Thursday, so don't forget your umbrella.
Dear team, thank you for your hard work this quarter. Our revenue grew by 15 percent, and we shipped three major releases. Next month we will focus on performance, reliability and documentation. Please send me your ideas before Friday.
The library has more than 200,000 books, 3,500 journals and a large collection of maps. Visitors can borrow up to 10 books at a time for 21 days. The reading room is open from 9:00 to 18:30, Monday through Saturday.
A good function does one thing, has a clear name, and is easy to test. Write small functions, handle errors early, and keep the happy path on the left. Comments should explain why, not what. Measure before you optimize, and then measure again.
The cat sat on the mat and looked at the dog. The dog wagged its tail and barked twice. Then they both fell asleep in the warm sun, and the house was quiet for the rest of the afternoon.
`;

export const CODE_CORPUS = `function add(a, b) {
  return a + b;
}

export async function fetchJson(url: string): Promise<object> {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(\`Request failed with status \${response.status}\`);
  }
  return response.json();
}

const numbers = [1, 2, 3, 4, 5];
const squares = numbers.map((x) => x * x);
console.log(squares.filter((x) => x % 2 === 0).join(', '));

class Stack<T> {
  private items: T[] = [];
  push(item: T): void {
    this.items.push(item);
  }
  pop(): T | undefined {
    return this.items.pop();
  }
  get size(): number {
    return this.items.length;
  }
}

def fibonacci(n):
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

if __name__ == "__main__":
    for i in range(10):
        print(i, fibonacci(i))

import numpy as np
matrix = np.zeros((3, 3), dtype=np.float32)
matrix[0, 0] = 1.0
print(matrix.sum(axis=1))

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int total = 0;
    for (int i = 0; i < argc; i++) {
        total += atoi(argv[i]);
    }
    printf("total = %d\\n", total);
    return 0;
}

fn main() {
    let words = vec!["alpha", "beta", "gamma"];
    for (index, word) in words.iter().enumerate() {
        println!("{}: {}", index, word);
    }
}

SELECT name, COUNT(*) AS total FROM orders WHERE status = 'shipped' GROUP BY name ORDER BY total DESC;

{"name": "example", "version": "1.0.0", "dependencies": {"lodash": "^4.17.21"}, "private": true}

git clone https://github.com/example/project.git && cd project && npm install && npm test
for f in *.txt; do echo "$f"; wc -l "$f"; done
`;

/** The whole built-in corpus. */
export const BUILTIN_CORPUS = ENGLISH_CORPUS + '\n' + CODE_CORPUS;
