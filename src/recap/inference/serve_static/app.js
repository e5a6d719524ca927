// The RECAP page: POST /caption, then (when the server has an index) POST /search both ways.
"use strict";

const $ = (id) => document.getElementById(id);
let hasIndex = false;

async function api(path, form) {
  const response = await fetch(path, { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function showHits(list, hits) {
  list.replaceChildren(
    ...hits.map((hit) => {
      const item = document.createElement("li");
      const name = document.createElement("strong");
      name.textContent = hit.song_id;
      const line = document.createElement("span");
      line.textContent = ` — ${hit.first_line} `;
      const score = document.createElement("small");
      score.textContent = `(${hit.score.toFixed(3)})`;
      item.append(name, line, score);
      return item;
    }),
  );
}

async function submit(event) {
  event.preventDefault();
  const file = $("audio").files[0];
  const lyrics = $("lyrics").value;
  if (!file || !lyrics.trim()) {
    $("status").textContent = "Choose a song and paste its lyrics.";
    return;
  }
  const form = new FormData();
  form.append("audio", file);
  form.append("lyrics", lyrics);
  for (const name of ["num_beams", "max_new_tokens", "seed"]) {
    if ($(name).value) form.append(name, $(name).value);
  }
  if ($("do_sample").checked) form.append("do_sample", "true");

  $("submit").disabled = true;
  $("status").className = "";
  $("status").textContent = "Listening and reading…";
  try {
    const result = await api("/caption", form);
    $("caption").textContent = result.caption || "(the model returned an empty caption)";
    $("result").hidden = false;
    $("status").textContent = `Done in ${result.seconds.toFixed(2)} s.`;
    if (hasIndex) {
      const byAudio = new FormData();
      byAudio.append("audio", file);
      byAudio.append("k", "5");
      const byLyrics = new FormData();
      byLyrics.append("lyrics", lyrics);
      byLyrics.append("k", "5");
      const [a, l] = await Promise.all([api("/search", byAudio), api("/search", byLyrics)]);
      showHits($("by-audio"), a.results);
      showHits($("by-lyrics"), l.results);
      $("neighbours").hidden = false;
    }
  } catch (err) {
    $("status").className = "error";
    $("status").textContent = `Error: ${err.message}`;
  } finally {
    $("submit").disabled = false;
  }
}

async function init() {
  $("song-form").addEventListener("submit", submit);
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
