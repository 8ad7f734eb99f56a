/**
 * The sidebar's archive tree: projects, participants, sessions and series (with their QC badge), each level loaded
 * from the server when its parent is first opened. A series row opens the viewer (double click or its image
 * button) and inserts its loading code into the active notebook (its code button).
 */
import { ServerConnection } from '@jupyterlab/services';
import {
  caretDownIcon,
  caretRightIcon,
  codeIcon,
  folderIcon,
  imageIcon,
  LabIcon,
  userIcon
} from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import {
  Archive,
  IProject,
  ISeries,
  ISeriesContext,
  qcLabel,
  seriesName
} from './archive';
import { sessionIcon, seriesIcon } from './icons';

export interface ITreeOptions {
  settings: ServerConnection.ISettings;
  /** Open a series in the viewer. */
  onOpen: (ctx: ISeriesContext) => void;
  /** Insert the code that loads a series into the active notebook. */
  onInsert: (ctx: ISeriesContext) => void;
}

type Kind = 'project' | 'participant' | 'session' | 'series';

function text(tag: string, className: string, content: string): HTMLElement {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = content;
  return el;
}

function message(className: string, content: string): HTMLElement {
  const li = text('li', className, content);
  li.setAttribute('role', 'none');
  return li;
}

export class ArchiveTree extends Widget {
  constructor(options: ITreeOptions) {
    super();
    this._options = options;
    this.addClass('jp-incloud-ArchiveTree');
    this._list = document.createElement('ul');
    this._list.className = 'jp-incloud-tree';
    this._list.setAttribute('role', 'tree');
    this._list.setAttribute('aria-label', 'INCloud archive');
    this.node.appendChild(this._list);
    this.node.dataset.status = 'empty';
  }

  /** Load the projects again (open folders close). */
  async refresh(): Promise<void> {
    this.node.dataset.status = 'loading';
    this._list.replaceChildren(message('jp-incloud-message', 'Loading the archive…'));
    let projects: IProject[];
    try {
      projects = await Archive.projects(this._options.settings);
    } catch (error) {
      this._list.replaceChildren(message('jp-incloud-error', String((error as Error).message || error)));
      this.node.dataset.status = 'error';
      return;
    }
    if (projects.length === 0) {
      this._list.replaceChildren(
        message('jp-incloud-message jp-incloud-no-projects', 'You are not a member of any project.')
      );
    } else {
      this._list.replaceChildren(...projects.map(p => this._project(p)));
      if (projects.length === 1) {
        await this._toggle(this._list.firstElementChild as HTMLElement);
      }
    }
    this.node.dataset.status = 'ready';
  }

  private _project(p: IProject): HTMLElement {
    return this._branch('project', p.code, p.name, folderIcon, { project: p.code }, async () => {
      const rows = await Archive.participants(p.code, this._options.settings);
      return rows.map(r =>
        this._branch('participant', `sub-${r.label}`, '', userIcon, { participant: r.label }, async () => {
          const sessions = await Archive.sessions(p.code, r.label, this._options.settings);
          return sessions.map(s =>
            this._branch('session', `ses-${s.label}`, '', sessionIcon, { session: String(s.id) }, async () => {
              const series = await Archive.series(p.code, s.id, this._options.settings);
              return series.map(x =>
                this._series({ series: x, project: p.code, participant: r.label, session: s.label })
              );
            })
          );
        })
      );
    });
  }

  /** A folder-like node whose children load on first open. */
  private _branch(
    kind: Kind,
    label: string,
    detail: string,
    icon: LabIcon,
    data: { [key: string]: string },
    load: () => Promise<HTMLElement[]>
  ): HTMLElement {
    const li = document.createElement('li');
    li.className = 'jp-incloud-node';
    li.dataset.kind = kind;
    Object.assign(li.dataset, data);
    li.setAttribute('role', 'treeitem');
    li.setAttribute('aria-expanded', 'false');
    const row = document.createElement('div');
    row.className = 'jp-incloud-row';
    row.tabIndex = 0;
    const caret = document.createElement('span');
    caret.className = 'jp-incloud-caret';
    caretRightIcon.element({ container: caret });
    row.append(caret, icon.element({ className: 'jp-incloud-icon', tag: 'span' }));
    row.append(text('span', 'jp-incloud-label', label));
    if (detail) {
      row.append(text('span', 'jp-incloud-detail', detail));
    }
    row.title = detail ? `${label}: ${detail}` : label;
    li.append(row);
    this._loaders.set(li, load);
    row.addEventListener('click', () => void this._toggle(li));
    row.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        void this._toggle(li);
      }
    });
    return li;
  }

  /** Open (loading the children the first time) or close a branch. */
  private async _toggle(li: HTMLElement): Promise<void> {
    const caret = li.querySelector(':scope > .jp-incloud-row > .jp-incloud-caret') as HTMLElement;
    let group = li.querySelector(':scope > ul') as HTMLElement | null;
    if (li.getAttribute('aria-expanded') === 'true') {
      li.setAttribute('aria-expanded', 'false');
      caretRightIcon.element({ container: caret });
      if (group) {
        group.hidden = true;
      }
      return;
    }
    li.setAttribute('aria-expanded', 'true');
    caretDownIcon.element({ container: caret });
    if (group && group.dataset.failed !== 'true') {
      group.hidden = false;
      return;
    }
    group?.remove();
    group = document.createElement('ul');
    group.setAttribute('role', 'group');
    group.append(message('jp-incloud-message', 'Loading…'));
    li.append(group);
    try {
      const children = await this._loaders.get(li)!();
      group.replaceChildren(
        ...(children.length ? children : [message('jp-incloud-message', 'Nothing here yet')])
      );
      li.dataset.loaded = 'true';
    } catch (error) {
      // shown in place; opening the node again retries
      group.replaceChildren(message('jp-incloud-error', String((error as Error).message || error)));
      group.dataset.failed = 'true';
    }
  }

  /** A series: name, datatype, QC badge, and its two actions. */
  private _series(ctx: ISeriesContext): HTMLElement {
    const s: ISeries = ctx.series;
    const li = document.createElement('li');
    li.className = 'jp-incloud-node';
    li.dataset.kind = 'series';
    li.dataset.series = String(s.id);
    li.dataset.qc = s.qc_status;
    li.setAttribute('role', 'treeitem');
    const row = document.createElement('div');
    row.className = 'jp-incloud-row';
    row.tabIndex = 0;
    row.title = `Series ${s.id}: ${s.datatype}/${seriesName(s)} (${s.modality}); double-click to view`;
    const spacer = document.createElement('span');
    spacer.className = 'jp-incloud-caret';
    row.append(spacer, seriesIcon.element({ className: 'jp-incloud-icon', tag: 'span' }));
    row.append(text('span', 'jp-incloud-label', seriesName(s)));
    row.append(text('span', 'jp-incloud-spacer', ''));
    const badge = text('span', `jp-incloud-qc jp-incloud-qc-${s.qc_status}`, s.qc_status);
    badge.title = qcLabel(s.qc_status);
    row.append(badge);
    row.append(
      this._action('jp-incloud-open', imageIcon, 'Open in the NIfTI viewer', () => this._options.onOpen(ctx)),
      this._action('jp-incloud-insert', codeIcon, 'Insert the code that loads this series into the notebook', () =>
        this._options.onInsert(ctx)
      )
    );
    row.addEventListener('dblclick', () => this._options.onOpen(ctx));
    row.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        this._options.onOpen(ctx);
      }
    });
    li.append(row);
    return li;
  }

  private _action(className: string, icon: LabIcon, title: string, run: () => void): HTMLElement {
    const button = document.createElement('button');
    button.className = `jp-incloud-action ${className} jp-Button jp-mod-minimal`;
    button.title = title;
    button.setAttribute('aria-label', title);
    icon.element({ container: button });
    button.addEventListener('click', event => {
      event.stopPropagation();
      run();
    });
    button.addEventListener('dblclick', event => event.stopPropagation());
    return button;
  }

  private _options: ITreeOptions;
  private _list: HTMLElement;
  private _loaders = new WeakMap<HTMLElement, () => Promise<HTMLElement[]>>();
}
