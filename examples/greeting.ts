// The seed's first example: the event system in one process.
//   deno run -A examples/greeting.ts      node dist/examples/greeting.js
import { OnlineRLContext, task } from "../mod.ts";

await task.start({ asyncMode: false, ctx: new OnlineRLContext() }, () => {
  task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
  task.emit("greeting", "Hi");
});
// >>> Get msg: Hi
