// A JSON value as a collapsible tree. Everything is set with textContent: event data is never
// read as HTML.

const OPEN_LEVELS = 2;

export function tree(value, label = null) {
  const root = document.createElement("div");
  root.className = "tree";
  root.append(node(label, value, 0));
  return root;
}

function node(key, value, depth) {
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value)
      ? value.map((item, index) => [String(index), item])
      : Object.entries(value);
    const details = document.createElement("details");
    details.open = depth < OPEN_LEVELS;
    const summary = document.createElement("summary");
    if (key !== null) summary.append(keySpan(key));
    const shape = document.createElement("span");
    shape.className = "shape";
    shape.textContent = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
    summary.append(shape);
    details.append(summary);
    const list = document.createElement("ul");
    for (const [childKey, child] of entries) {
      const item = document.createElement("li");
      item.append(node(childKey, child, depth + 1));
      list.append(item);
    }
    details.append(list);
    return details;
  }
  const leaf = document.createElement("div");
  leaf.className = "leaf";
  if (key !== null) leaf.append(keySpan(key));
  const shown = document.createElement("span");
  shown.className = `value ${value === null ? "null" : typeof value}`;
  shown.textContent = typeof value === "string" ? JSON.stringify(value) : String(value);
  leaf.append(shown);
  return leaf;
}

function keySpan(key) {
  const span = document.createElement("span");
  span.className = "key";
  span.textContent = `${key}: `;
  return span;
}
