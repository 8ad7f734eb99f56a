/**
 * INCloud's JupyterLab extension: the archive sidebar (left), the NIfTI viewer panels it opens, and the action that
 * inserts a series' loading code into the active notebook. Data comes only from this extension's server routes in
 * the user's own server (incloud_jupyterlab/routes.py), which ask the INCloud API with the user's token.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Panel, Widget } from '@lumino/widgets';
import { codeIcon, refreshIcon, SidePanel, ToolbarButton } from '@jupyterlab/ui-components';

import { ISeriesContext, qcLabel, seriesName, seriesTitle } from './archive';
import { insertLoadCode } from './code';
import { incloudIcon, seriesIcon } from './icons';
import { ArchiveTree } from './tree';
import { NiftiViewer, SLICE_TYPE } from './viewer';

const PLUGIN_ID = '@incloud/jupyterlab:plugin';

namespace CommandIDs {
  export const show = 'incloud:show-archive';
  export const refresh = 'incloud:refresh-archive';
}

/** The sidebar: a JupyterLab side panel (header, toolbar, content) holding the archive tree. */
class ArchivePanel extends SidePanel {
  constructor(tree: ArchiveTree) {
    super({ content: new Panel() });
    this.tree = tree;
    this.id = 'incloud-archive';
    this.addClass('jp-incloud-ArchivePanel');
    this.title.icon = incloudIcon;
    this.title.caption = 'INCloud archive';
    const heading = document.createElement('h2');
    heading.textContent = 'INCloud archive';
    heading.classList.add('jp-text-truncated');
    this.header.addWidget(new Widget({ node: heading }));
    this.content.addWidget(tree);
  }

  readonly tree: ArchiveTree;

  /** The archive loads the first time the panel is shown (not at every JupyterLab start). */
  protected onAfterShow(msg: any): void {
    super.onAfterShow(msg);
    if (!this._loaded) {
      this._loaded = true;
      void this.tree.refresh();
    }
  }

  private _loaded = false;
}

function viewButton(viewer: NiftiViewer, label: string, type: SLICE_TYPE, all: ToolbarButton[]): ToolbarButton {
  const button = new ToolbarButton({
    label,
    tooltip: `${label} view`,
    className: `jp-incloud-view jp-incloud-view-${label.toLowerCase()}`,
    pressed: type === SLICE_TYPE.MULTIPLANAR,
    onClick: () => {
      viewer.setSliceType(type);
      all.forEach(b => (b.pressed = b === button));
    }
  });
  all.push(button);
  return button;
}

function qcBadge(status: string): Widget {
  const node = document.createElement('span');
  node.className = `jp-incloud-qc jp-incloud-qc-${status}`;
  node.textContent = qcLabel(status);
  return new Widget({ node });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'INCloud archive sidebar, NIfTI viewer and notebook code insertion.',
  autoStart: true,
  optional: [INotebookTracker, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const viewers = new Map<number, MainAreaWidget<NiftiViewer>>();

    const insert = async (ctx: ISeriesContext): Promise<void> => {
      if (!notebooks) {
        await showErrorMessage('INCloud', 'Notebooks are not available in this JupyterLab.');
        return;
      }
      let panel = insertLoadCode(notebooks, ctx);
      if (!panel) {
        // No notebook open yet: a new one, then the code into its first cell.
        const created = (await app.commands.execute('notebook:create-new', {
          kernelName: 'python3'
        })) as NotebookPanel;
        await created.context.ready;
        await created.sessionContext.ready; // so the inserted cell can be run at once
        app.shell.activateById(created.id);
        panel = insertLoadCode(notebooks, ctx);
      }
      if (panel) {
        app.shell.activateById(panel.id);
      }
    };

    const open = (ctx: ISeriesContext): void => {
      const existing = viewers.get(ctx.series.id);
      if (existing && !existing.isDisposed) {
        app.shell.activateById(existing.id);
        return;
      }
      const content = new NiftiViewer(ctx, settings);
      const widget = new MainAreaWidget({ content });
      widget.id = `incloud-viewer-${ctx.series.id}`;
      widget.addClass('jp-incloud-ViewerPanel');
      widget.title.label = `sub-${ctx.participant} ${seriesName(ctx.series)}`;
      widget.title.caption = seriesTitle(ctx);
      widget.title.icon = seriesIcon;
      widget.title.closable = true;
      const views: ToolbarButton[] = [];
      widget.toolbar.addItem('axial', viewButton(content, 'Axial', SLICE_TYPE.AXIAL, views));
      widget.toolbar.addItem('coronal', viewButton(content, 'Coronal', SLICE_TYPE.CORONAL, views));
      widget.toolbar.addItem('sagittal', viewButton(content, 'Sagittal', SLICE_TYPE.SAGITTAL, views));
      widget.toolbar.addItem('multiplanar', viewButton(content, 'Multiplanar', SLICE_TYPE.MULTIPLANAR, views));
      widget.toolbar.addItem('render', viewButton(content, '3D', SLICE_TYPE.RENDER, views));
      widget.toolbar.addItem('spacer', new Widget({ node: document.createElement('span') }));
      widget.toolbar.node.lastElementChild?.classList.add('jp-Toolbar-spacer');
      widget.toolbar.addItem('qc', qcBadge(ctx.series.qc_status));
      widget.toolbar.addItem(
        'insert',
        new ToolbarButton({
          icon: codeIcon,
          label: 'Insert code',
          className: 'jp-incloud-insert-code',
          tooltip: 'Insert the code that loads this series into the active notebook',
          onClick: () => void insert(ctx)
        })
      );
      widget.disposed.connect(() => viewers.delete(ctx.series.id));
      viewers.set(ctx.series.id, widget);
      app.shell.add(widget, 'main');
      app.shell.activateById(widget.id);
    };

    const tree = new ArchiveTree({ settings, onOpen: open, onInsert: ctx => void insert(ctx) });
    const panel = new ArchivePanel(tree);
    panel.toolbar.addItem(
      'refresh',
      new ToolbarButton({
        icon: refreshIcon,
        tooltip: 'Reload the archive',
        className: 'jp-incloud-refresh',
        onClick: () => void tree.refresh()
      })
    );
    app.shell.add(panel, 'left', { rank: 150 });
    restorer?.add(panel, 'incloud-archive');

    app.commands.addCommand(CommandIDs.show, {
      label: 'Show the INCloud archive',
      icon: incloudIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Reload the INCloud archive',
      icon: refreshIcon,
      execute: () => tree.refresh()
    });
    palette?.addItem({ command: CommandIDs.show, category: 'INCloud' });
    palette?.addItem({ command: CommandIDs.refresh, category: 'INCloud' });
  }
};

export default plugin;
