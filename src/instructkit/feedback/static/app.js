// instructkit labeling: keyboard shortcuts, the help overlay, and the ranking board (drag and drop
// or keyboard, ties allowed). Plain JavaScript, no build step. Text from models is only ever set
// with textContent, never parsed as HTML.
"use strict";

const LETTERS = "ABCDEFGHI";
const started = Date.now();

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function isTyping(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName.toLowerCase();
  if (tag === "textarea" || tag === "select") return true;
  if (tag !== "input") return false;
  return !["radio", "checkbox", "button", "submit", "hidden"].includes((target.type || "").toLowerCase());
}

function showError(message) {
  const box = document.getElementById("client-error");
  box.textContent = message;
  box.hidden = !message;
  if (message) box.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------------------- help overlay

function keyName(key) {
  return key === "ctrl+enter" ? "Ctrl+Enter" : key;
}

function buildHelp() {
  const body = document.querySelector("#help-table tbody");
  body.replaceChildren();
  const rows = [];
  for (const li of document.querySelectorAll("#page-keys li")) rows.push([li.dataset.k, li.textContent.trim()]);
  for (const node of document.querySelectorAll("[data-key]")) {
    if (node.id === "help-button" || node.closest("[hidden]")) continue;
    const text = (node.getAttribute("aria-label") || node.textContent || node.name || "").replace(/\s+/g, " ").trim();
    rows.push([keyName(node.dataset.key), text || node.id]);
  }
  rows.push(["?", "Show or hide this list"]);
  for (const [k, text] of rows) {
    const tr = el("tr");
    const th = el("th");
    th.appendChild(el("kbd", null, k));
    tr.append(th, el("td", null, text));
    body.appendChild(tr);
  }
}

function toggleHelp(force) {
  const help = document.getElementById("help");
  const show = force === undefined ? help.hidden : force;
  if (show) buildHelp();
  help.hidden = !show;
}

// ---------------------------------------------------------------------------- the ranking page

function initRanking(form) {
  const k = Number(form.dataset.k);
  const readonly = form.dataset.readonly === "1";
  const requireLikert = form.dataset.requireLikert === "1";
  const inputs = [...form.querySelectorAll("#rank-inputs input")];
  const snippets = [...form.querySelectorAll("#rank-inputs .rank-input")].map((l) => l.dataset.snippet || "");
  const board = document.getElementById("rank-board");
  const outputs = [...form.querySelectorAll("article.output")];
  const notRankable = document.getElementById("not-rankable");
  const banner = document.getElementById("not-rankable-banner");
  document.getElementById("rank-inputs").hidden = true; // the board drives these fields now

  let step = "evaluate";
  let outFocus = 0;
  let cardFocus = null;
  let tiers = readTiers();

  function readTiers() {
    // group output indices by the number in their rank field; 1 = best
    const byRank = new Map();
    inputs.forEach((input, i) => {
      const r = Number(input.value) || k;
      if (!byRank.has(r)) byRank.set(r, []);
      byRank.get(r).push(i);
    });
    return [...byRank.keys()].sort((a, b) => a - b).map((r) => byRank.get(r));
  }

  function writeInputs() {
    tiers.forEach((tier, r) => tier.forEach((i) => { inputs[i].value = String(r + 1); }));
  }

  // Place card i at a slot of the tiers *without* it: even slot 2t = a rank of its own before
  // tier t, odd slot 2t+1 = tied with tier t.
  function without(i) {
    return tiers.map((t) => t.filter((x) => x !== i)).filter((t) => t.length);
  }

  function slotOf(i) {
    const t = tiers.findIndex((tier) => tier.includes(i));
    return tiers[t].length === 1 ? 2 * t : 2 * t + 1;
  }

  function placeAt(i, slot) {
    const rest = without(i);
    slot = Math.max(0, Math.min(slot, 2 * rest.length));
    if (slot % 2 === 1) rest[(slot - 1) / 2].push(i);
    else rest.splice(slot / 2, 0, [i]);
    tiers = rest.map((t) => t.sort((a, b) => a - b));
    changed(i);
  }

  // a drop target refers to the board as drawn (with the card still in place)
  function dropOnTier(i, t) {
    if (tiers[t].includes(i)) return;
    const target = tiers[t][0];
    const rest = without(i);
    rest.find((tier) => tier.includes(target)).push(i);
    tiers = rest.map((tier) => tier.sort((a, b) => a - b));
    changed(i);
  }

  function dropOnGap(i, g) {
    const copy = tiers.map((t) => t.filter((x) => x !== i));
    copy.splice(g, 0, [i]);
    tiers = copy.filter((t) => t.length);
    changed(i);
  }

  function changed(i) {
    writeInputs();
    cardFocus = i;
    render();
    const card = document.getElementById(`card-${i}`);
    if (card) card.focus();
  }

  function dropTarget(node, onDrop) {
    node.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; node.classList.add("over"); });
    node.addEventListener("dragleave", () => node.classList.remove("over"));
    node.addEventListener("drop", (e) => {
      e.preventDefault();
      node.classList.remove("over");
      const i = Number(e.dataTransfer.getData("text/plain"));
      if (!Number.isNaN(i) && !readonly) onDrop(i);
    });
  }

  function card(i) {
    const c = el("div", "card");
    c.id = `card-${i}`;
    c.dataset.index = String(i);
    c.tabIndex = 0;
    c.draggable = !readonly;
    c.setAttribute("role", "listitem");
    c.append(el("strong", null, `Output ${LETTERS[i]}`), el("span", "snippet", snippets[i]));
    c.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData("text/plain", String(i));
      e.dataTransfer.effectAllowed = "move";
      c.classList.add("dragging");
      board.classList.add("dragging");
    });
    c.addEventListener("dragend", () => { c.classList.remove("dragging"); board.classList.remove("dragging"); });
    c.addEventListener("focus", () => { cardFocus = i; setStep("rank", false); });
    return c;
  }

  function render() {
    board.replaceChildren();
    const gap = (g) => {
      const node = el("div", "gap");
      node.id = `gap-${g}`;
      node.dataset.gap = String(g);
      node.setAttribute("aria-hidden", "true");
      dropTarget(node, (i) => dropOnGap(i, g));
      return node;
    };
    board.appendChild(gap(0));
    tiers.forEach((tier, t) => {
      const row = el("div", tier.length > 1 ? "tier tied" : "tier");
      row.id = `tier-${t}`;
      row.dataset.tier = String(t);
      row.setAttribute("role", "list");
      row.setAttribute("aria-label", `Rank ${t + 1}${tier.length > 1 ? " (tie)" : ""}`);
      row.appendChild(el("span", "tier-label", String(t + 1)));
      tier.forEach((i) => row.appendChild(card(i)));
      dropTarget(row, (i) => dropOnTier(i, t));
      board.appendChild(row);
      board.appendChild(gap(t + 1));
    });
    board.classList.toggle("disabled", notRankable.value === "1");
    for (const c of board.querySelectorAll(".card")) c.classList.toggle("current", Number(c.dataset.index) === cardFocus);
  }

  function setStep(s, moveFocus = true) {
    step = s;
    document.getElementById("evaluate").classList.toggle("active", s === "evaluate");
    document.getElementById("rank").classList.toggle("active", s === "rank");
    if (!moveFocus) return;
    if (s === "evaluate") focusOutput(outFocus);
    else {
      if (cardFocus === null) cardFocus = tiers[0][0];
      const c = document.getElementById(`card-${cardFocus}`);
      if (c) c.focus();
    }
  }

  function focusOutput(i) {
    outFocus = Math.max(0, Math.min(k - 1, i));
    outputs.forEach((o, j) => o.classList.toggle("current", j === outFocus));
    outputs[outFocus].focus({ preventScroll: true });
    outputs[outFocus].scrollIntoView({ block: "nearest" });
  }

  function cardOrder() {
    return tiers.flat();
  }

  function setNotRankable(on) {
    notRankable.value = on ? "1" : "0";
    banner.hidden = !on;
    render();
  }

  outputs.forEach((o, i) => o.addEventListener("click", () => { outFocus = i; outputs.forEach((x, j) => x.classList.toggle("current", j === i)); setStep("evaluate", false); }));
  const toggle = document.getElementById("toggle-not-rankable");
  if (toggle) toggle.addEventListener("click", () => setNotRankable(notRankable.value !== "1"));

  form.addEventListener("submit", (e) => {
    if (e.submitter && e.submitter.form !== form) return;
    writeInputs();
    if (requireLikert && notRankable.value !== "1") {
      const missing = [];
      for (let i = 0; i < k; i++) if (!form.querySelector(`input[name="likert_${i}"]:checked`)) missing.push(i);
      if (missing.length) {
        e.preventDefault();
        showError(`Give output${missing.length > 1 ? "s" : ""} ${missing.map((i) => LETTERS[i]).join(", ")} a 1-7 score first.`);
        setStep("evaluate", false);
        focusOutput(missing[0]);
      }
    }
  });

  // keys of this page; returns true when the key was used
  function onKey(e) {
    const key = e.key;
    if (readonly) return false;
    if (key === "e") { setStep("evaluate"); return true; }
    if (key === "r") { setStep("rank"); return true; }
    if (step === "evaluate") {
      if (key === "j" || key === "ArrowDown") { focusOutput(outFocus + 1); return true; }
      if (key === "k" || key === "ArrowUp") { focusOutput(outFocus - 1); return true; }
      if (/^[1-7]$/.test(key)) {
        const radio = form.querySelector(`input[name="likert_${outFocus}"][value="${key}"]`);
        radio.checked = true;
        showError("");
        return true;
      }
      const box = outputs[outFocus].querySelector(`input[data-flag-key="${key}"]`);
      if (box) { box.checked = !box.checked; return true; }
      return false;
    }
    // rank step
    const order = cardOrder();
    if (cardFocus === null) cardFocus = order[0];
    const shiftUp = (e.shiftKey && key === "ArrowUp") || key === "K";
    const shiftDown = (e.shiftKey && key === "ArrowDown") || key === "J";
    if (shiftUp) { placeAt(cardFocus, slotOf(cardFocus) - 1); return true; }
    if (shiftDown) { placeAt(cardFocus, slotOf(cardFocus) + 1); return true; }
    if (key === "j" || key === "ArrowDown" || key === "k" || key === "ArrowUp") {
      const pos = order.indexOf(cardFocus) + (key === "j" || key === "ArrowDown" ? 1 : -1);
      cardFocus = order[Math.max(0, Math.min(order.length - 1, pos))];
      render();
      document.getElementById(`card-${cardFocus}`).focus();
      return true;
    }
    if (key === "t") {
      const s = slotOf(cardFocus);
      const t = Math.floor(s / 2);
      if (t > 0 || s % 2 === 0) placeAt(cardFocus, s % 2 === 0 ? s - 1 : s - 2);
      return true;
    }
    if (/^[1-9]$/.test(key)) { placeAt(cardFocus, 2 * (Number(key) - 1)); return true; }
    return false;
  }

  render();
  if (notRankable.value === "1") setNotRankable(true);
  outputs.forEach((o, j) => o.classList.toggle("current", j === 0));
  setStep("evaluate", false);
  return { onKey, toggleNotRankable: () => setNotRankable(notRankable.value !== "1") };
}

// ---------------------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("label-form");
  let page = null;
  if (form && form.dataset.kind === "ranking") page = initRanking(form);
  if (form) {
    form.addEventListener("submit", () => {
      for (const s of form.querySelectorAll("input.seconds")) s.value = String((Date.now() - started) / 1000);
    });
  }
  document.getElementById("help-button").addEventListener("click", () => toggleHelp());

  document.addEventListener("keydown", (e) => {
    const help = document.getElementById("help");
    if (e.key === "Escape") {
      if (!help.hidden) { toggleHelp(false); e.preventDefault(); return; }
      if (isTyping(e.target)) { e.target.blur(); e.preventDefault(); }
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      const submit = document.getElementById("submit");
      if (submit) { e.preventDefault(); submit.click(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
    if (e.key === "?") { toggleHelp(); e.preventDefault(); return; }
    if (!help.hidden) return;
    if (page && page.onKey(e)) { e.preventDefault(); return; }
    const target = [...document.querySelectorAll("[data-key]")].find((n) => n.dataset.key === e.key && !n.closest("[hidden]"));
    if (!target) return;
    e.preventDefault();
    const tag = target.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || (tag === "input" && isTyping(target))) target.focus();
    else target.click();
  });
});
