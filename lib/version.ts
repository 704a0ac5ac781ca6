// Kept in step with package.json by tests/package.test.ts.
export const version = '0.1.0';
