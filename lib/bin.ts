#!/usr/bin/env node
import { main } from "./cli.ts";
import { exitProcess, scriptArgs } from "./runtime.ts";
exitProcess(await main(scriptArgs()));
