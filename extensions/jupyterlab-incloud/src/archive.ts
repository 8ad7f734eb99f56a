/**
 * The archive as the sidebar sees it: one level of the tree per request, the types of its rows, and how a
 * series is named (BIDS entities and suffix, never anything identifying: the API holds no identities).
 */
import { ServerConnection } from '@jupyterlab/services';

import { requestAPI } from './request';

export interface IProject {
  code: string;
  name: string;
}

export interface IParticipant {
  id: number;
  label: string;
}

export interface ISession {
  id: number;
  label: string;
  participant_id: number;
}

export interface ISeries {
  id: number;
  session_id: number;
  modality: string;
  datatype: string;
  suffix: string;
  entities: { [key: string]: string } | null;
  qc_status: string;
}

/** Where a series sits in the tree (for its name in the viewer and in the inserted code). */
export interface ISeriesContext {
  series: ISeries;
  project: string;
  participant: string;
  session: string;
}

type Level = 'projects' | 'participants' | 'sessions' | 'series';

async function level<T>(
  kind: Level,
  parents: { [key: string]: string | number },
  settings: ServerConnection.ISettings
): Promise<T[]> {
  const query = Object.entries(parents)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  const data = await requestAPI<{ items: T[] }>(
    `archive/${kind}${query ? '?' + query : ''}`,
    settings
  );
  return data.items;
}

export const Archive = {
  projects: (s: ServerConnection.ISettings) =>
    level<IProject>('projects', {}, s),
  participants: (project: string, s: ServerConnection.ISettings) =>
    level<IParticipant>('participants', { project }, s),
  // the API takes a participant by label (a number would be read as a label too)
  sessions: (project: string, participant: string, s: ServerConnection.ISettings) =>
    level<ISession>('sessions', { project, participant }, s),
  series: (project: string, session: number, s: ServerConnection.ISettings) =>
    level<ISeries>('series', { project, session }, s)
};

/** BIDS-style name of a series: its entities (task-rest, run-1, ...) then its suffix, e.g. "task-rest_bold". */
export function seriesName(series: ISeries): string {
  const entities = Object.entries(series.entities || {})
    .filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => `${k}-${v}`);
  return [...entities, series.suffix].join('_');
}

/** "DEMO sub-001 ses-01 anat/T1w": where a series is, in BIDS words. */
export function seriesTitle(ctx: ISeriesContext): string {
  return `${ctx.project} sub-${ctx.participant} ses-${ctx.session} ${ctx.series.datatype}/${seriesName(ctx.series)}`;
}

/** QC status as the viewer's badge shows it (the archive stores pending / pass / fail / caveat). */
export function qcLabel(status: string): string {
  return `QC ${status || 'pending'}`;
}
