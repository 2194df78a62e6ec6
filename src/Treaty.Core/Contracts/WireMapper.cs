using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Contracts;

/// <summary>Maps stored state to the API's views.</summary>
public static class WireMapper
{
    public static TransactionView ToView(TransactionState state) => new(
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
        [.. state.Branches.Select((b, i) => ToView(state.Spec.Branches[i], b))]);

    public static TransactionSummaryView ToSummary(TransactionState state) => new(
        state.Gid,
        state.Spec.Protocol.ToWire(),
        state.Status.ToWire(),
        state.Stuck,
        state.Reason,
        state.CreatedAt,
        state.UpdatedAt,
        state.Branches.Length);

    public static EventView ToView(JournalRecord record) => new(
        record.Sequence,
        record.Entry.At,
        record.Entry.Kind,
        record.Entry.Branch,
        record.Entry.Op,
        record.Entry.Attempt,
        record.Entry.StatusCode,
        record.Entry.Detail);

    private static BranchView ToView(BranchSpec spec, BranchState state)
    {
        var ops = new Dictionary<string, OperationView>(StringComparer.Ordinal);
        foreach (var op in state.Ops)
        {
            if (spec.UrlOf(op.Op) is not { } url)
            {
                continue;
            }

            ops[op.Op] = new OperationView(
                url, op.Status.ToWire(), op.Attempts, op.LastStatusCode, op.LastError,
                op.FirstAttemptAt, op.LastAttemptAt, op.FinishedAt, op.NextAttemptAt, Parse(op.ResultJson));
        }

        return new BranchView(spec.Name, BranchStatus(state), spec.DependsOn, spec.Pivot, ops);
    }

    /// <summary>One word for a branch: pending, running, succeeded, failed, compensating, compensated.</summary>
    public static string BranchStatus(BranchState state)
    {
        var forward = state.Ops[0];
        var backward = state.Ops.Length > 1 ? state.Ops[1] : null;
        if (backward is { Status: OpStatus.Succeeded })
        {
            return "compensated";
        }

        if (backward is { Status: OpStatus.InFlight or OpStatus.Waiting })
        {
            return "compensating";
        }

        return forward.Status switch
        {
            OpStatus.NotStarted => "pending",
            OpStatus.InFlight or OpStatus.Waiting => "running",
            OpStatus.Succeeded => "succeeded",
            OpStatus.Failed => "failed",
            OpStatus.Exhausted => "unknown",
            _ => "pending",
        };
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
