#!/usr/bin/env node
'use strict';
require('../dist/cjs/cli/index.js').main(process.argv);
