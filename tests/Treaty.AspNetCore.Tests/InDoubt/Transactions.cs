using System.Net.Http.Json;
using System.Text.Json;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>Submits 2PC and 3PC transactions to a real coordinator with plain HTTP JSON.</summary>
internal static class Transactions
{
    /// <summary>Fast retries, so a test sees the coordinator give up (votes, notifications) or retry (outcomes) quickly.</summary>
    public static RetryPolicyRequest Quick(int maxAttempts) => new() { MaxAttempts = maxAttempts, InitialDelayMs = 20, MaxDelayMs = 100 };

    public static BranchRequest TwoPhase(string name, Uri url, RetryPolicyRequest? retry = null) => new()
    {
        Name = name,
        Prepare = url.ToString(),
        Commit = url.ToString(),
        Rollback = url.ToString(),
        Retry = retry,
    };

    public static BranchRequest ThreePhase(string name, Uri url, RetryPolicyRequest? retry = null) => new()
    {
        Name = name,
        CanCommit = url.ToString(),
        PreCommit = url.ToString(),
        DoCommit = url.ToString(),
        Abort = url.ToString(),
        Retry = retry,
    };

    /// <summary>Submits and waits up to <paramref name="wait"/> for the transaction to end.</summary>
    public static Task<TransactionView> SubmitAsync(InProcessCoordinator coordinator, string gid, string protocol, string wait, params BranchRequest[] branches) =>
        SubmitAsync(coordinator, gid, protocol, wait, "{}", branches);

    /// <summary>Submits with <paramref name="payload"/> (JSON given to every branch) and waits up to <paramref name="wait"/>.</summary>
    public static async Task<TransactionView> SubmitAsync(InProcessCoordinator coordinator, string gid, string protocol, string wait, string payload, params BranchRequest[] branches)
    {
        var request = new SubmitTransactionRequest
        {
            Gid = gid,
            Protocol = protocol,
            Payload = JsonDocument.Parse(payload).RootElement.Clone(),
            Branches = [.. branches],
        };
        using var response = await coordinator.Http.PostAsJsonAsync($"api/v1/transactions?wait={wait}", request, TreatyJsonContext.Default.SubmitTransactionRequest);
        response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
        return (await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.TransactionView))!;
    }

    public static async Task<TransactionView> GetAsync(InProcessCoordinator coordinator, string gid) =>
        (await coordinator.Http.GetFromJsonAsync($"api/v1/transactions/{gid}", TreatyJsonContext.Default.TransactionView))!;

    /// <summary>Polls until the transaction's status is <paramref name="status"/> (at most 20 s).</summary>
    public static async Task<TransactionView> WaitForStatusAsync(InProcessCoordinator coordinator, string gid, string status)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (true)
        {
            var view = await GetAsync(coordinator, gid);
            if (view.Status == status)
            {
                return view;
            }

            await Task.Delay(20, timeout.Token);
        }
    }

    /// <summary>Polls until <paramref name="condition"/> holds (at most 20 s).</summary>
    public static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (!await condition())
        {
            await Task.Delay(20, timeout.Token);
        }
    }
}
