// ESLint flat config: eslint:recommended + typescript-eslint recommended.
// Lints lib/, bench/, tests/, scripts/ and root-level config/scripts.
//
// @eslint/js is not a dependency, so eslint:recommended is rebuilt from ESLint's own rule
// metadata (meta.docs.recommended), which is exactly what @eslint/js ships.
import { defineConfig, globalIgnores } from 'eslint/config';
import { builtinRules } from 'eslint/use-at-your-own-risk';
import tseslint from 'typescript-eslint';

const eslintRecommended = Object.fromEntries(
  [...builtinRules]
    .filter(([, rule]) => rule.meta?.docs?.recommended)
    .map(([name]) => [name, 'error']),
);

// Node.js globals for plain JS files (TypeScript files get these from @types/node).
const nodeGlobals = Object.fromEntries(
  [
    'process',
    'console',
    'Buffer',
    'global',
    'globalThis',
    'require',
    'module',
    'exports',
    '__dirname',
    '__filename',
    'setTimeout',
    'clearTimeout',
    'setInterval',
    'clearInterval',
    'setImmediate',
    'clearImmediate',
    'queueMicrotask',
    'structuredClone',
    'URL',
    'URLSearchParams',
    'TextEncoder',
    'TextDecoder',
    'AbortController',
    'AbortSignal',
    'fetch',
    'performance',
  ].map((name) => [name, 'readonly']),
);

export default defineConfig([
  globalIgnores(['**/build/', '**/dist/', '**/node_modules/', '**/coverage/', '**/.cache/']),
  {
    files: ['**/*.{js,mjs,cjs,ts,mts,cts}'],
    languageOptions: { ecmaVersion: 'latest', sourceType: 'module', globals: nodeGlobals },
    rules: eslintRecommended,
  },
  ...tseslint.configs.recommended,
  {
    // Plain CommonJS scripts (bin/, scripts/, jest.config.js) use require() by design.
    files: ['**/*.cjs', 'bin/**/*.js', 'scripts/**/*.js', '*.config.js'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
    },
  },
]);
