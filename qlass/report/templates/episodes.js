(function () {
  'use strict';
  var list = document.getElementById('episode-list');
  if (!list) return;
  var SEP = '\u0000';
  var rows = Array.prototype.slice.call(list.querySelectorAll('tbody tr'));
  var episodeOf = {};  // task + SEP + strategy -> the first stored episode's id
  rows.forEach(function (row) {
    var key = row.dataset.task + SEP + row.dataset.strategy;
    if (!(key in episodeOf)) episodeOf[key] = row.dataset.episode;
  });
  var byId = function (id) { return document.getElementById(id); };
  var filters = [byId('filter-strategy'), byId('filter-outcome'), byId('filter-task')];
  var body = document.body.dataset;
  var state = {task: body.defaultTask, left: body.defaultLeft, right: body.defaultRight};

  function applyFilters() {
    var strategy = filters[0].value, outcome = filters[1].value;
    var text = filters[2].value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var visible = (!strategy || row.dataset.strategy === strategy) &&
        (!outcome || row.dataset.outcome === outcome) &&
        (!text || row.dataset.task.toLowerCase().indexOf(text) !== -1);
      row.hidden = !visible;
      if (visible) shown += 1;
    });
    byId('shown-count').textContent = shown + ' of ' + rows.length + ' episodes shown';
  }

  function fill(side) {
    var pane = byId('pane-' + side);
    var strategy = state[side];
    pane.querySelector('select.pane-strategy').value = strategy;
    var target = pane.querySelector('.pane-body');
    var id = episodeOf[state.task + SEP + strategy];
    var template = id && byId('episode-' + id);
    if (template) {
      target.replaceChildren(template.content.cloneNode(true));
      return;
    }
    var missing = document.createElement('p');
    missing.className = 'missing';
    missing.textContent = strategy
      ? 'No episode of ' + strategy + ' on ' + state.task + ' in this stage.'
      : 'Pick a strategy.';
    target.replaceChildren(missing);
  }

  function render() {
    fill('left');
    fill('right');
    rows.forEach(function (row) {
      var shownHere = row.dataset.strategy === state.left || row.dataset.strategy === state.right;
      row.classList.toggle('selected', row.dataset.task === state.task && shownHere);
    });
    var hash = '#' + new URLSearchParams(state).toString();
    if (location.hash === hash) return;
    try {
      history.replaceState(null, '', hash);
    } catch (error) {  // some browsers refuse it for file:// pages
      location.hash = hash;
    }
  }

  function readHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    ['task', 'left', 'right'].forEach(function (name) {
      if (params.get(name) !== null) state[name] = params.get(name);
    });
  }

  list.addEventListener('click', function (event) {
    var row = event.target.closest('tbody tr');
    if (!row) return;
    state.task = row.dataset.task;
    var strategy = row.dataset.strategy;
    if (strategy !== state.left && strategy !== state.right) {
      state.left = strategy;
    }
    render();
  });
  filters.forEach(function (input) { input.addEventListener('input', applyFilters); });
  ['left', 'right'].forEach(function (side) {
    byId('pane-' + side).querySelector('select.pane-strategy').addEventListener('change', function (event) {
      state[side] = event.target.value;
      render();
    });
  });
  window.addEventListener('hashchange', function () { readHash(); render(); });
  readHash();
  applyFilters();
  render();
})();
