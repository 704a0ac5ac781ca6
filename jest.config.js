/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  transform: {
    '^.+\\.ts$': [
      'ts-jest',
      { tsconfig: 'tsconfig.json', isolatedModules: true, diagnostics: false },
    ],
  },
  // Native work runs on stream threads; keep jest's own parallelism modest on 2 cores.
  maxWorkers: 2,
  testTimeout: 60000,
};
