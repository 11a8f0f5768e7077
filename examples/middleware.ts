// The seed's second example: the same events, split into a receiver and a sender middleware.
//   deno run -A examples/middleware.ts    node dist/examples/middleware.js
import { type OnlineRLContext as Ctx, OnlineRLContext, task } from "../mod.ts";

function receiver() {
  // Since `on` is a permanent callback, we only need to register it once.
  // If you only want to call back once, you can use `once`.
  task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
  return function _receiver(_ctx: Ctx) {};
}

function sender() {
  return function _sender(ctx: Ctx) {
    task.emit("greeting", `Hi ${ctx.totalStep} times`);
  };
}

await task.start({ asyncMode: false, ctx: new OnlineRLContext() }, async () => {
  task.use(receiver());
  task.use(sender());
  await task.run(10);
});
// >>> Get msg: Hi 0 times ... Get msg: Hi 9 times
