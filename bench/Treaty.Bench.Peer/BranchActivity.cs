using System.Globalization;
using System.Text;
using MassTransit;

namespace Treaty.Bench.Peer;

/// <summary>What the routing slip carries for step i: which branch of the participant to call.</summary>
internal sealed class BranchArguments
{
    public int Branch { get; init; }
}

/// <summary>The compensate log Courier keeps in the slip for a completed step, so that it can be undone.</summary>
internal sealed class BranchLog
{
    public int Branch { get; init; }
}

/// <summary>
/// Step i of the saga: one HTTP POST to <c>{participant}/peer/b{i}/action</c>, completed on a 2xx; its compensation
/// POSTs <c>/peer/b{i}/compensate</c>. A non-2xx or a transport error throws, which faults the slip and makes Courier
/// compensate the steps already done, in reverse order — the same contract as one of Treaty's saga branches.
/// </summary>
internal sealed class BranchActivity(HttpClient http, Uri participant) : IActivity<BranchArguments, BranchLog>
{
    public async Task<ExecutionResult> Execute(ExecuteContext<BranchArguments> context)
    {
        var branch = context.Arguments.Branch;
        await PostAsync(branch, "action", context.TrackingNumber, context.CancellationToken);
        return context.Completed(new BranchLog { Branch = branch });
    }

    public async Task<CompensationResult> Compensate(CompensateContext<BranchLog> context)
    {
        await PostAsync(context.Log.Branch, "compensate", context.TrackingNumber, context.CancellationToken);
        return context.Compensated();
    }

    private async Task PostAsync(int branch, string operation, Guid trackingNumber, CancellationToken cancellationToken)
    {
        var uri = new Uri(participant, string.Create(CultureInfo.InvariantCulture, $"peer/b{branch}/{operation}"));
        // A Guid's text needs no JSON escaping.
        using var body = new StringContent($$"""{"trackingNumber":"{{trackingNumber}}"}""", Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(uri, body, cancellationToken);
        response.EnsureSuccessStatusCode();
    }
}
