// The RECAP page: POST /caption when a song is given, and (when the server has an index)
// POST /search with whichever of audio and lyrics is given.
"use strict";

const $ = (id) => document.getElementById(id);
let hasIndex = false;
let queryUrl = null; // the object URL playing the chosen file, revoked when it changes

async function api(path, form) {
  const response = await fetch(path, { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function hitItem(hit) {
  const item = document.createElement("li");
  const name = document.createElement("strong");
  name.textContent = hit.song_id;
  const line = document.createElement("span");
  line.textContent = hit.first_line ? ` — ${hit.first_line} ` : " (no lyrics) ";
  const score = document.createElement("small");
  score.textContent = `(${hit.score.toFixed(3)})`;
  item.append(name, line, score);
  if (hit.audio_url) {
    const player = document.createElement("audio");
    player.controls = true;
    player.preload = "none";
    player.src = hit.audio_url;
    item.append(player);
  }
  return item;
}

function showHits(column, list, hits) {
  list.replaceChildren(...hits.map(hitItem));
  $(column).hidden = false;
}

// Nothing of an earlier song stays on the page once a new request starts or fails.
function clearResults() {
  $("caption").textContent = "";
  $("result").hidden = true;
  for (const id of ["by-audio", "by-lyrics"]) $(id).replaceChildren();
  $("by-audio-column").hidden = true;
  $("by-lyrics-column").hidden = true;
  $("neighbours").hidden = true;
}

function playQuery() {
  const file = $("audio").files[0];
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = file ? URL.createObjectURL(file) : null;
  $("query-player").hidden = !file;
  if (file) $("query-player").src = queryUrl;
  else $("query-player").removeAttribute("src");
}

function searchForm(field, value) {
  const form = new FormData();
  form.append(field, value);
  form.append("k", "5");
  return form;
}

async function submit(event) {
  event.preventDefault();
  clearResults();
  const file = $("audio").files[0];
  const lyrics = $("lyrics").value.trim() ? $("lyrics").value : "";
  $("status").className = "";
  if (!file && !lyrics) {
    $("status").textContent = "Choose a song, paste lyrics, or both.";
    return;
  }
  if (!file && !hasIndex) {
    $("status").textContent = "This server has no index to search: add the song's audio to interpret it.";
    return;
  }
  const calls = {};
  if (file) {
    const form = new FormData();
    form.append("audio", file);
    if (lyrics) form.append("lyrics", lyrics);
    for (const name of ["num_beams", "max_new_tokens", "seed"]) {
      if ($(name).value) form.append(name, $(name).value);
    }
    if ($("do_sample").checked) form.append("do_sample", "true");
    calls.caption = api("/caption", form);
  }
  if (hasIndex && file) calls.byAudio = api("/search", searchForm("audio", file));
  if (hasIndex && lyrics) calls.byLyrics = api("/search", searchForm("lyrics", lyrics));

  $("submit").disabled = true;
  $("status").textContent = file ? "Listening and reading…" : "Searching…";
  try {
    const names = Object.keys(calls);
    const values = await Promise.all(names.map((n) => calls[n]));
    const got = Object.fromEntries(names.map((n, i) => [n, values[i]]));
    if (got.caption) {
      $("caption").textContent = got.caption.caption || "(the model returned an empty caption)";
      $("result").hidden = false;
    }
    if (got.byAudio) showHits("by-audio-column", $("by-audio"), got.byAudio.results);
    if (got.byLyrics) showHits("by-lyrics-column", $("by-lyrics"), got.byLyrics.results);
    $("neighbours").hidden = !(got.byAudio || got.byLyrics);
    $("status").textContent = got.caption
      ? `Done in ${got.caption.seconds.toFixed(2)} s.`
      : "Done: lyrics alone are searched; add the song's audio to interpret it.";
  } catch (err) {
    clearResults();
    $("status").className = "error";
    $("status").textContent = `Error: ${err.message}`;
  } finally {
    $("submit").disabled = false;
  }
}

async function init() {
  $("song-form").addEventListener("submit", submit);
  $("audio").addEventListener("change", playQuery);
  try {
    const health = await (await fetch("/health")).json();
    hasIndex = Boolean(health.index);
    const index = hasIndex ? ` · index of ${health.index.songs} songs` : " · no index";
    $("footer").textContent = `recap ${health.version} · model ${health.model}${index}`;
  } catch (err) {
    $("footer").textContent = "server unreachable";
  }
}

init();
