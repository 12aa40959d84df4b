{#-
  `semantics: replay` (issue 14; spec section 17 question 4): per person and key, the operations since
  W0 replayed in time order onto the current ClickHouse state. SET overwrites (absent keys included),
  SET_ONCE sets only when the key is absent at that point, UNSET removes. Replay order: timestamp, then
  SET_ONCE before SET before UNSET (PostHog's ingestion applies one event's `$set_once`, `$set`,
  `$unset` in that order; R7's "UNSET wins ties"), then R5.9's event uuid, position, value.

  What decides the replayed value of a key (proof: tests/unit/test_reference_replay.py):
    L  = the latest SET or UNSET: from the merged `last_set` and `last_unset_at` (an UNSET at the
         timestamp of the latest SET comes after it);
    L is a SET    -> its value;
    L is an UNSET -> the first SET_ONCE with a later timestamp, or absent;
    no L          -> the current value if present, else the first SET_ONCE (`first_set_once`), or absent.
  Every input is a max/min state of int_person_property_ops__by_window except "the first SET_ONCE after
  the latest UNSET". The rows merged per person (windows, distinct_ids, slices re-read by incremental
  builds) overlap in time, and no bounded max/min state gives that value over overlapping parts. So the
  state `last_set_once_at` says whether such a SET_ONCE exists (only then is it needed: the key was
  unset, then filled by a SET_ONCE), and for those keys alone the diff reads it from the operations
  (recon_replay_first_set_once_after_unset below): exact, and cheap while few keys need it.
-#}

{#- The per-key decisions of the build's semantics (both emit the columns of recon_key_decisions). -#}
{% macro recon_decisions(semantics, prefix='', first_after='first_set_once_after_unset') -%}
  {%- if semantics == 'replay' -%}
    {{ recon_replay_decisions(last_set=prefix ~ 'last_set', first_set_once=prefix ~ 'first_set_once',
                              last_unset_at=prefix ~ 'last_unset_at', first_after=first_after) }}
  {%- else -%}
    {{ recon_key_decisions(last_set=prefix ~ 'last_set', first_set_once=prefix ~ 'first_set_once',
                           last_unset_at=prefix ~ 'last_unset_at') }}
  {%- endif -%}
{%- endmacro %}


{#- Whether the replay of a key ends with an UNSET followed by a SET_ONCE (it then needs the first one). -#}
{% macro recon_replay_needs_first_after(last_set='last_set', last_unset_at='last_unset_at', last_set_once_at='last_set_once_at') -%}
    ({{ last_unset_at }} is not null
        and ({{ last_set }} is null or {{ last_unset_at }} >= tupleElement(assumeNotNull({{ last_set }}), 1))
        and {{ last_set_once_at }} > {{ last_unset_at }})
{%- endmacro %}


{#-
  The replay decision for one (person, key), emitting the columns of recon_key_decisions:
    set_value, set_at, set_once_value, set_once_at, unset_at, in_* (= keep_*), keep_set, keep_set_once,
    keep_unset.
  `first_after` = the first SET_ONCE after the latest UNSET (NULL when none or not needed).
  A value from a SET goes to the SET entries; from a SET_ONCE to the SET_ONCE entries when the key is
  absent now, else to the SET entries (it must overwrite the present value).
-#}
{% macro recon_replay_decisions(last_set='last_set', first_set_once='first_set_once', last_unset_at='last_unset_at',
                                first_after='first_set_once_after_unset') -%}
    {{ last_unset_at }} is not null
        and ({{ last_set }} is null or assumeNotNull({{ last_unset_at }}) >= tupleElement(assumeNotNull({{ last_set }}), 1))
        as ends_unset,
    {{ last_set }} is not null and not ends_unset as ends_set,
    -- the operation whose value the replay ends with (null: the key ends absent, or as it is now)
    multiIf(
        ends_set, {{ last_set }},
        ends_unset, {{ first_after }},
        in_state, null,
        {{ first_set_once }}
    ) as replayed,
    tupleElement(assumeNotNull(replayed), 1) as replayed_at,
    tupleElement(assumeNotNull(replayed), 4) as replayed_value,
    replayed_value as set_value,
    replayed_at as set_at,
    replayed_value as set_once_value,
    replayed_at as set_once_at,
    assumeNotNull({{ last_unset_at }}) as unset_at,
    replayed is not null and (ends_set or in_state)
        and (not in_state or {{ recon_json_differs('replayed_value', 'state_value') }}) as keep_set,
    replayed is not null and not ends_set and not in_state as keep_set_once,
    replayed is null and ends_unset and in_state as keep_unset,
    keep_set as in_set,
    keep_set_once as in_set_once,
    keep_unset as in_unset
{%- endmacro %}

