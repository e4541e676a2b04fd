// Events, violations and failures per second, per source: a small line chart each, last minute.

const POINTS = 60;
const SERIES = [
  ["events", "#2f6fde"],
  ["violations", "#c98a00"],
  ["failures", "#c62f2f"],
];

export class Chart {
  constructor(container) {
    this.container = container;
    this.sources = new Map();
  }

  clear() {
    this.sources.clear();
    this.container.replaceChildren();
  }

  // `counts` is {source: {events, violations, failures}} for the second just gone.
  add(counts) {
    for (const [source, values] of Object.entries(counts)) {
      let entry = this.sources.get(source);
      if (!entry) {
        entry = this.create(source);
        this.sources.set(source, entry);
      }
      entry.points.push(values);
      if (entry.points.length > POINTS) entry.points.shift();
      const totals = Object.fromEntries(SERIES.map(([name]) => [name, values[name] || 0]));
      for (const [name] of SERIES) entry.figure.dataset[name] = String(totals[name]);
      entry.figure.dataset.received = String(
        Number(entry.figure.dataset.received || 0) + totals.events,
      );
      entry.numbers.textContent =
        `${totals.events} events/s · ${totals.violations} violations/s · ` +
        `${totals.failures} failures/s`;
      this.draw(entry);
    }
  }

  create(source) {
    const figure = document.createElement("figure");
    figure.className = "source-chart";
    figure.dataset.source = source;
    const caption = document.createElement("figcaption");
    const name = document.createElement("strong");
    name.textContent = source === "-" ? "(no source: refused)" : source;
    const numbers = document.createElement("span");
    numbers.className = "numbers";
    caption.append(name, " ", numbers);
    const canvas = document.createElement("canvas");
    canvas.width = 240;
    canvas.height = 48;
    figure.append(caption, canvas);
    this.container.append(figure);
    return { figure, canvas, numbers, points: [] };
  }

  draw(entry) {
    const { canvas, points } = entry;
    const context = canvas.getContext("2d");
    const { width, height } = canvas;
    context.clearRect(0, 0, width, height);
    const top = Math.max(1, ...points.flatMap((p) => SERIES.map(([name]) => p[name] || 0)));
    const step = width / (POINTS - 1);
    for (const [name, colour] of SERIES) {
      context.beginPath();
      context.strokeStyle = colour;
      context.lineWidth = 1.5;
      points.forEach((point, index) => {
        const x = (POINTS - points.length + index) * step;
        const y = height - 2 - ((point[name] || 0) / top) * (height - 4);
        if (index === 0) context.moveTo(x, y);
        else context.lineTo(x, y);
      });
      context.stroke();
    }
  }
}
