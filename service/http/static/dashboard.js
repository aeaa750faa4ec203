// The recovery dashboard: reads the figures from the service's JSON endpoints with the bearer
// token the person gave (URL fragment #token=... or the form; kept in sessionStorage), draws
// them with plotly.js, and reads them again every few seconds (#refresh=N to change that).
// Money arrives as integer minor units (strings) and is shown with the currency's exponent:
// no float ever holds an amount that is summed or shown.

const TOKEN_KEY = "refund-retry.token";
const PAGE_SIZE = 50;
const DEFAULT_REFRESH_SECONDS = 10;
const EXPONENTS = JSON.parse(document.getElementById("currency-exponents").textContent);
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const STATUS_COLORS = {
  PENDING_APPROVAL: "#f0b429",
  APPROVED: "#7cc4fa",
  PROCESSING: "#2563eb",
  SUCCEEDED: "#3ebd93",
  FAILED: "#e12d39",
  REJECTED: "#9e2146",
  CANCELED: "#9aa5b1",
  REQUIRES_ACTION: "#f7631b",
};
const CURRENCY_COLORS = ["#2563eb", "#3ebd93", "#f0b429", "#9446ed", "#e12d39", "#616e7c"];
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

const $ = (id) => document.getElementById(id);
const byTestId = (name) => document.querySelector(`[data-testid="${name}"]`);

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
  }
}

// -- token and settings ------------------------------------------------------------------

/** Takes the token out of the fragment (into sessionStorage) and reads #refresh=N. */
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  const refresh = Number(params.get("refresh"));
  return Number.isFinite(refresh) && refresh >= 1 ? refresh : DEFAULT_REFRESH_SECONDS;
}

const token = () => sessionStorage.getItem(TOKEN_KEY);
const zone = () => ($("zone").value === "browser" ? BROWSER_ZONE : "UTC");

// -- formatting --------------------------------------------------------------------------

const int = (value) => BigInt(value ?? 0); // proto3 JSON: int64 as a string, 0 left out
const pad = (n) => String(n).padStart(2, "0");
const clock = (date) => `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
const PERCENT = new Intl.NumberFormat(undefined, {
  style: "percent",
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});
const DECIMAL = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

/** "12345" minor units of exponent 2 -> "123.45": exact, from the digits. */
function decimalString(minorUnits, exponent) {
  let digits = int(minorUnits);
  const sign = digits < 0n ? "-" : "";
  if (digits < 0n) digits = -digits;
  let text = digits.toString();
  if (exponent > 0) {
    text = text.padStart(exponent + 1, "0");
    text = `${text.slice(0, -exponent)}.${text.slice(-exponent)}`;
  }
  return sign + text;
}

function formatMoney(money) {
  const code = money.currency_code;
  const exponent = EXPONENTS[code];
  if (exponent === undefined) return `${int(money.minor_units)} ${code} (minor units)`;
  // A numeric string is formatted as the exact decimal it spells (Intl.NumberFormat v3).
  return new Intl.NumberFormat(undefined, {
    style: "currency",
    currency: code,
    minimumFractionDigits: exponent,
    maximumFractionDigits: exponent,
  }).format(decimalString(money.minor_units, exponent));
}

/** For plotting only (an axis position); amounts shown as text use formatMoney. */
function majorUnits(money) {
  return Number(decimalString(money.minor_units, EXPONENTS[money.currency_code] ?? 0));
}

const moneyValue = (list) => (list || []).map((m) => `${m.currency_code}:${int(m.minor_units)}`).join(" ");

function formatSeconds(total) {
  const s = Math.floor(total);
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const durationSeconds = (text) => (text ? Number(text.replace(/s$/, "")) : null);

const label = (name) => name.toLowerCase().replaceAll("_", " ");
const statusName = (status) => status.replace(/^REFUND_STATUS_/, "");

// -- the page ------------------------------------------------------------------------------

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function show(testId, text, value) {
  const element = byTestId(testId);
  element.textContent = text;
  element.dataset.value = value;
}

function renderHeadline(total) {
  const recovered = int(total.plans_recovered);
  const failed = recovered + int(total.plans_exhausted) + int(total.plans_open);
  const rate = total.recovery_rate ?? 0;
  show("recovery-rate", failed > 0n ? PERCENT.format(rate) : "—", String(rate));
  show("recovery-counts", `${recovered} of ${failed} failed payments`, `${recovered}/${failed}`);
  const amounts = total.amount_recovered || [];
  show("amount-recovered", amounts.length ? amounts.map(formatMoney).join("\n") : "—", moneyValue(amounts));
  const perRecovery = total.attempts_per_recovery ?? 0;
  show("attempts-per-recovery", recovered > 0n ? DECIMAL.format(perRecovery) : "—", String(perRecovery));
  const attempts = int(total.retry_attempts);
  const success = total.payment_success_rate ?? 0;
  show(
    "payment-success",
    attempts > 0n ? `${PERCENT.format(success)} of ${attempts} retries succeeded` : "no retries",
    String(success),
  );
  for (const p of ["p50", "p90"]) {
    const seconds = durationSeconds(total[`time_to_recover_${p}`]);
    show(`time-to-recover-${p}`, seconds === null ? "—" : formatSeconds(seconds), seconds ?? "");
  }
  show("pending-approvals", String(int(total.pending_approvals)), String(int(total.pending_approvals)));
  const pending = total.pending_approval_amount || [];
  show("pending-amount", pending.map(formatMoney).join(" · "), moneyValue(pending));
}

function baseLayout(extra) {
  return {
    autosize: true,
    margin: { l: 52, r: 52, t: 8, b: 36 },
    font: { family: "system-ui, sans-serif", size: 12, color: "#1f2933" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    legend: { orientation: "h", y: -0.18 },
    bargap: 0.25,
    ...extra,
  };
}

function emptyLayout(text) {
  return baseLayout({
    xaxis: { visible: false },
    yaxis: { visible: false },
    annotations: [{ text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
  });
}

/**
 * Amounts per currency over `keys` (`amountsOf(key)`: that key's Money list): one bar chart
 * per currency, stacked, as amounts in different currencies do not share an axis. Each
 * trace's customdata holds the exact minor units.
 */
function moneyChart(keys, amountsOf, xaxis, empty) {
  const currencies = [...new Set(keys.flatMap((k) => amountsOf(k).map((m) => m.currency_code)))].sort();
  if (!currencies.length) return [[], emptyLayout(empty)];
  const layout = baseLayout({
    grid: { rows: currencies.length, columns: 1, pattern: "independent", ygap: 0.18 },
    showlegend: false,
  });
  const traces = currencies.map((code, index) => {
    const amounts = keys.map(
      (k) => amountsOf(k).find((m) => m.currency_code === code) || { currency_code: code, minor_units: "0" },
    );
    const axis = index === 0 ? "" : String(index + 1);
    const last = index === currencies.length - 1;
    layout[`xaxis${axis}`] = { ...xaxis, showticklabels: last, ...(index ? { matches: "x" } : {}) };
    layout[`yaxis${axis}`] = { title: { text: code }, rangemode: "tozero", nticks: 3 };
    return {
      type: "bar",
      name: code,
      x: keys,
      y: amounts.map(majorUnits),
      xaxis: `x${axis}`,
      yaxis: `y${axis}`,
      customdata: amounts.map((m) => String(int(m.minor_units))),
      text: amounts.map(formatMoney),
      textposition: "none",
      hovertemplate: `%{x}: %{text}<extra>${code}</extra>`,
      marker: { color: CURRENCY_COLORS[index % CURRENCY_COLORS.length] },
    };
  });
  return [traces, layout];
}

const DAY_AXIS = { type: "date", tickformat: "%b %d", hoverformat: "%Y-%m-%d" };

function recoveryChart(days) {
  const keys = days.map((g) => g.key);
  const count = (field) => days.map((g) => Number(int(g[field])));
  const rate = days.map((g) => {
    const failed = int(g.plans_recovered) + int(g.plans_exhausted) + int(g.plans_open);
    return failed > 0n ? (g.recovery_rate ?? 0) * 100 : null;
  });
  const bar = (name, field, color) => ({ type: "bar", name, x: keys, y: count(field), marker: { color } });
  return [
    [
      bar("recovered", "plans_recovered", "#3ebd93"),
      bar("still retrying", "plans_open", "#7cc4fa"),
      bar("exhausted", "plans_exhausted", "#cbd2d9"),
      {
        type: "scatter",
        mode: "lines+markers",
        name: "recovery rate",
        x: keys,
        y: rate,
        yaxis: "y2",
        line: { color: "#2563eb", width: 2 },
        hovertemplate: "%{x}: %{y:.1f} %<extra>recovery rate</extra>",
      },
    ],
    baseLayout({
      barmode: "stack",
      xaxis: DAY_AXIS,
      yaxis: { title: { text: "failed payments" }, rangemode: "tozero" },
      yaxis2: { overlaying: "y", side: "right", range: [0, 102], dtick: 25, ticksuffix: " %", showgrid: false },
    }),
  ];
}

function successChart(groups, keyLabel, color) {
  const tried = groups.filter((g) => int(g.retry_attempts) > 0n);
  if (!tried.length) return [[], emptyLayout("no retries in this period")];
  return [
    [
      {
        type: "bar",
        name: "success rate",
        x: tried.map((g) => keyLabel(g.key)),
        y: tried.map((g) => (g.payment_success_rate ?? 0) * 100),
        customdata: tried.map((g) => [g.key, String(int(g.retry_attempts)), String(int(g.retry_successes))]),
        text: tried.map((g) => `${int(g.retry_successes)} of ${int(g.retry_attempts)}`),
        textposition: "outside",
        hovertemplate: "%{x}: %{y:.1f} % (%{text} retries)<extra></extra>",
        marker: { color },
      },
    ],
    baseLayout({
      xaxis: { type: "category" },
      yaxis: { range: [0, 110], ticksuffix: " %" },
      showlegend: false,
    }),
  ];
}

function refundCharts(byStatus) {
  const empty = "no refunds requested in this period";
  if (!byStatus.length) return [[[], emptyLayout(empty)], [[], emptyLayout(empty)]];
  const statuses = byStatus.map((s) => statusName(s.status));
  const counts = [
    {
      type: "bar",
      name: "refunds",
      x: statuses.map(label),
      y: byStatus.map((s) => Number(int(s.count))),
      customdata: statuses,
      marker: { color: statuses.map((s) => STATUS_COLORS[s] || "#616e7c") },
      hovertemplate: "%{x}: %{y}<extra></extra>",
    },
  ];
  const amountsByStatus = new Map(byStatus.map((s) => [label(statusName(s.status)), s.amount || []]));
  return [
    [counts, baseLayout({ xaxis: { type: "category" }, yaxis: { rangemode: "tozero" }, showlegend: false })],
    moneyChart(statuses.map(label), (key) => amountsByStatus.get(key), { type: "category" }, empty),
  ];
}

function recoveredChart(days) {
  const amounts = new Map(days.map((g) => [g.key, g.amount_recovered || []]));
  const keys = days.map((g) => g.key);
  return moneyChart(keys, (key) => amounts.get(key), DAY_AXIS, "no payment recovered in this period");
}

function age(createTime, now) {
  const seconds = Math.max(0, (now - Date.parse(createTime)) / 1000);
  return seconds < 60 ? "< 1 min" : formatSeconds(seconds);
}

function renderPending(list, now) {
  const refunds = list.refunds || [];
  const rows = refunds.map((refund) => {
    const row = document.createElement("tr");
    row.dataset.testid = "pending-row";
    row.dataset.refundId = refund.refund_id;
    const cell = (text, className, value) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (className) td.className = className;
      if (value !== undefined) td.dataset.value = value;
      row.append(td);
      return td;
    };
    cell(refund.refund_id.slice(0, 8), "", refund.refund_id).title = refund.refund_id;
    cell(refund.payment_id);
    cell(refund.customer_id);
    cell(formatMoney(refund.amount), "num", moneyValue([refund.amount]));
    cell(refund.requested_by);
    cell(`${(refund.approvals || []).length} of ${refund.required_approvals ?? 0}`);
    cell(age(refund.create_time, now), "num", refund.create_time);
    return row;
  });
  $("pending-rows").replaceChildren(...rows);
  $("pending-empty").hidden = rows.length > 0;
  const more = list.next_page_token ? " (the oldest; more wait)" : "";
  show("pending-table-count", `${rows.length}${more}`, String(rows.length));
}

async function render(byDay, byGateway, byClass, pending) {
  const now = Date.now();
  const total = byDay.total || {};
  renderHeadline(total);
  const days = byDay.groups || [];
  const [refundCounts, refundAmounts] = refundCharts(total.refunds_by_status || []);
  const charts = {
    "chart-recovery": recoveryChart(days),
    "chart-recovered": recoveredChart(days),
    "chart-gateway": successChart(byGateway.groups || [], (k) => k, "#2563eb"),
    "chart-decline": successChart(byClass.groups || [], (k) => (k ? label(k) : "not recorded"), "#9446ed"),
    "chart-refunds": refundCounts,
    "chart-refund-amounts": refundAmounts,
  };
  renderPending(pending, now);
  $("rolled-up").textContent = byDay.rolled_up_time
    ? `rolled up at ${clock(new Date(byDay.rolled_up_time))}`
    : "not rolled up yet";
  $("content").hidden = false;
  $("token-form").hidden = true;
  await Promise.all(
    Object.entries(charts).map(([id, [data, layout]]) => window.Plotly.react($(id), data, layout, PLOT_CONFIG)),
  );
  // Last: the period shown says which figures are on the page.
  const period = byTestId("period");
  period.textContent = `${byDay.first_day} – ${byDay.last_day} (${byDay.time_zone})`;
  Object.assign(period.dataset, { first: byDay.first_day, last: byDay.last_day, zone: byDay.time_zone });
}

// -- loading -------------------------------------------------------------------------------

async function getJson(path, params) {
  const url = new URL(path, location.href); // beside the page: .../refund-retry-workflows/<path>
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token()}` },
    cache: "no-store",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

async function load() {
  const days = Number($("range").value);
  const end = new Date();
  const start = new Date(end.getTime() - (days - 1) * 86_400_000);
  const range = { start_time: start.toISOString(), end_time: end.toISOString(), time_zone: zone() };
  return Promise.all([
    getJson("recovery-metrics", { ...range, group_by: "DAY" }),
    getJson("recovery-metrics", { ...range, group_by: "GATEWAY" }),
    getJson("recovery-metrics", { ...range, group_by: "DECLINE_CLASS" }),
    getJson("refunds", { status: "PENDING_APPROVAL", page_size: String(PAGE_SIZE) }),
  ]);
}

let refreshSeconds = DEFAULT_REFRESH_SECONDS;
let timer = null;
let generation = 0;
let zoneNote = "";

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  $("content").hidden = true;
  $("token-form").hidden = false;
  byTestId("updated").textContent = "";
  notice(message);
  $("token-input").focus();
}

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  if (!token()) {
    askForToken("Token needed: give a bearer token with the read role to see the figures.");
    return;
  }
  try {
    const answers = await load();
    if (mine !== generation) return; // a newer refresh (another range or zone) is under way
    await render(...answers);
    const now = new Date();
    show("updated", `updated ${clock(now)}`, now.toISOString());
    notice(zoneNote);
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof HttpError && error.status === 401) {
      askForToken(`Token needed: the service refused the token (${error.message}).`);
      return;
    }
    if (error instanceof HttpError && error.status === 403) {
      askForToken(`This token may not read the figures (${error.message}); give one with the read role.`);
      return;
    }
    if (error instanceof HttpError && error.field === "time_zone" && $("zone").value !== "UTC") {
      $("zone").value = "UTC";
      zoneNote = `Showing UTC: the service does not roll up ${BROWSER_ZONE} (${error.message}).`;
      refresh();
      return;
    }
    const reason = error instanceof HttpError ? error.message : `cannot reach the service: ${error.message}`;
    notice(`${reason}. Trying again in ${refreshSeconds} s.`);
  }
  timer = setTimeout(refresh, refreshSeconds * 1000);
}

function applyFragment() {
  refreshSeconds = readFragment();
  $("interval").textContent = String(refreshSeconds);
}

function start() {
  applyFragment();
  $("zone-browser").textContent = `browser's (${BROWSER_ZONE})`;
  if (!window.Plotly) {
    notice("The chart library (plotly.js) did not load: reload the page.");
    return;
  }
  $("range").addEventListener("change", refresh);
  $("zone").addEventListener("change", () => {
    zoneNote = "";
    refresh();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    notice("");
    refresh();
  });
  window.addEventListener("hashchange", () => {
    applyFragment();
    refresh();
  });
  refresh();
}

start();
