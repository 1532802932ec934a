/** Input line `i` of a CLI test batch: `q-<i>` asking "question <i>". */
export const chatLine = (i: number): string =>
  JSON.stringify({
    custom_id: `q-${i}`,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "deepseek-v4-flash", messages: [{ role: "user", content: `question ${i}` }] }
  })
