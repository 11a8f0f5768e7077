// A runner over a suite with one failing test: tests/meta.test.ts checks that it exits non-zero.
import "../_defer.ts";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runQueued } from "../_runner.ts";

const F = suite("deliberately failing");
F("passes", () => assert.ok(true));
F("fails", () => assert.is(1, 2));
F.run();

await runQueued();
