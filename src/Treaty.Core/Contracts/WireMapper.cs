using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Contracts;

/// <summary>Maps stored state to the API's views; the protocol's machine says how a branch reads.</summary>
public static class WireMapper
{
    public static TransactionView ToView(TransactionState state, IProtocolMachine machine) => new(
        state.Gid,
        state.Spec.Protocol.ToWire(),
        state.Status.ToWire(),
        state.Stuck,
        state.Reason,
        state.CreatedAt,
        state.UpdatedAt,
        state.Deadline,
        state.NextWakeAt,
        Parse(state.Spec.PayloadJson) ?? default,
        [.. state.Branches.Select((b, i) => ToView(state, i, machine))])
    {
        Phase = state.Phase,
        Decision = state.Outcome?.ToWire(),
        StuckOn = state.StuckOn is { } s ? new StuckView(s.Branch, s.Op, s.Attempts, s.LastStatusCode, s.LastError) : null,
        Ops = state.Ops.IsEmpty ? null : Operations(state.Ops, state.Spec.UrlOf),
        Writes = new WritesView(state.Version, state.ForcedWrites),
    };

    public static TransactionSummaryView ToSummary(TransactionState state) => new(
        state.Gid,
        state.Spec.Protocol.ToWire(),
        state.Status.ToWire(),
        state.Stuck,
        state.Reason,
        state.CreatedAt,
        state.UpdatedAt,
        state.Branches.Length)
    {
        Phase = state.Phase,
        Decision = state.Outcome?.ToWire(),
        StuckOn = state.StuckOn is { } s ? new StuckView(s.Branch, s.Op, s.Attempts, s.LastStatusCode, s.LastError) : null,
    };

    public static EventView ToView(JournalRecord record) => new(
        record.Sequence,
        record.Entry.At,
        record.Entry.Kind,
        record.Entry.Branch,
        record.Entry.Op,
        record.Entry.Attempt,
        record.Entry.StatusCode,
        record.Entry.Detail)
    {
        DurationMs = record.Entry.DurationMs,
        Body = record.Entry.Body,
    };

    private static BranchView ToView(TransactionState state, int index, IProtocolMachine machine)
    {
        var reading = machine.ReadBranch(state, index);
        if (state.Spec.Protocol == Protocol.Choreography)
        {
            // A choreography's branches are the services seen, their operations the event types they
            // reported; nothing has a URL because the coordinator never calls them. Services are in the
            // order they were first heard from, and each "depends on" the one before, so the graph
            // draws the flow of the events.
            IReadOnlyList<string> after = index == 0 ? [] : [state.Branches[index - 1].Name];
            return new BranchView(state.Branches[index].Name, reading.Status, after, false, Operations(state.Branches[index].Ops, static _ => ""));
        }

        var spec = state.Spec.Branches[index];
        return new BranchView(spec.Name, reading.Status, spec.DependsOn, spec.Pivot, Operations(state.Branches[index].Ops, spec.UrlOf))
        {
            Vote = reading.Vote,
        };
    }

    private static Dictionary<string, OperationView> Operations(IEnumerable<OpState> ops, Func<string, string?> urlOf)
    {
        var views = new Dictionary<string, OperationView>(StringComparer.Ordinal);
        foreach (var op in ops)
        {
            if (urlOf(op.Op) is not { } url)
            {
                continue;
            }

            views[op.Op] = new OperationView(
                url, op.Status.ToWire(), op.Attempts, op.LastStatusCode, op.LastError,
                op.FirstAttemptAt, op.LastAttemptAt, op.FinishedAt, op.NextAttemptAt, Parse(op.ResultJson));
        }

        return views;
    }

    private static JsonElement? Parse(string? json)
    {
        if (json is null)
        {
            return null;
        }

        try
        {
            using var document = JsonDocument.Parse(json);
            return document.RootElement.Clone();
        }
        catch (JsonException)
        {
            // A participant answered something that is not JSON; show it as a string.
            return JsonSerializer.SerializeToElement(json, Serialization.TreatyJsonContext.Default.String);
        }
    }
}
