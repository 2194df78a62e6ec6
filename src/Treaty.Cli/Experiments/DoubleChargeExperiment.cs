using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using static Treaty.Cli.DemoScenarios;

namespace Treaty.Cli.Experiments;

/// <summary>
/// A checkout whose answer is lost (the Order service commits it, then answers too late for the
/// client), retried by the client. A new Idempotency-Key per attempt charges twice; the same key
/// gets the stored answer and charges once.
/// </summary>
internal static class DoubleChargeExperiment
{
    public static Experiment Definition { get; } = new("double-charge",
        "A retry without an idempotency key charges twice.", RunAsync);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken ct)
    {
        var env = context.Env;
        var scenarios = new DemoScenarios(env, null, null);
        var table = new Table().Border(TableBorder.Rounded).Title("A checkout whose answer is lost, retried");
        table.AddColumn("retry");
        table.AddColumn(new TableColumn("orders").RightAligned());
        table.AddColumn(new TableColumn("charges").RightAligned());
        table.AddColumn(new TableColumn("charged").RightAligned());
        table.AddColumn("second answer");
        var checks = new List<Check>();
        foreach (var sameKey in new[] { false, true })
        {
            var (orders, charges, charged, answer) = await AttemptAsync(env, scenarios, sameKey, ct);
            table.AddRow(sameKey ? "same Idempotency-Key" : "a new key", $"{orders}", $"{charges}", $"{charged:0.00}", answer);
            var expected = sameKey ? 1 : 2;
            checks.Add(Expect($"{(sameKey ? "the same key" : "a new key")}: {expected} order(s)", orders, expected));
            checks.Add(Expect($"{(sameKey ? "the same key" : "a new key")}: {expected} charge(s) of 25.00", charges, expected));
            if (sameKey)
            {
                checks.Add(new Check("the retry got the stored answer (Idempotent-Replayed: true)", answer.Contains("replayed", StringComparison.Ordinal), answer));
            }
        }

        return new ExperimentResult(Definition.Name,
            "the answer was lost after the commit: retried with a new key the customer paid twice, with the same key once", checks, table);
    }

    private static async Task<(int Orders, int Charges, decimal Charged, string SecondAnswer)> AttemptAsync(DemoEnvironment env, DemoScenarios scenarios, bool sameKey, CancellationToken ct)
    {
        var before = await scenarios.WalletAsync("alice", ct);
        var ordersBefore = await OrderIdsAsync(env, ct);
        // The Order service commits the checkout, then holds its answer 1.5 s; the client gives up after 0.5 s.
        await env.SetFaultAsync(env.OrderUrl, "/checkout", failTimes: 0, status: 503, delayMs: 1500, ct);
        var firstKey = Guid.NewGuid().ToString();
        using (var impatient = new HttpClient { Timeout = TimeSpan.FromMilliseconds(500) })
        {
            try
            {
                await PostAsync(impatient, env, firstKey, ct);
            }
            catch (TaskCanceledException) when (!ct.IsCancellationRequested)
            {
                // the answer is lost
            }
        }

        await env.ClearFaultsAsync(ct);
        var (status, replayed) = await PostAsync(env.Http, env, sameKey ? firstKey : Guid.NewGuid().ToString(), ct);
        var answer = $"{status}" + (replayed ? " (replayed)" : " (a new order)");
        var clock = Stopwatch.StartNew();
        List<string> created;
        do
        {
            created = [.. (await OrderIdsAsync(env, ct)).Except(ordersBefore)];
            foreach (var id in created)
            {
                await scenarios.OrderAsync(id, ct); // until each has its outcome
            }
        }
        while (created.Count < (sameKey ? 1 : 2) && clock.Elapsed < TimeSpan.FromSeconds(10));

        var ledger = (await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice/ledger", ct))["entries"]!.AsArray();
        var gids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var id in created)
        {
            gids.Add(Str(await env.GetJsonAsync($"{env.OrderUrl}/orders/{id}", ct), "gid")!);
        }

        var charges = ledger.Count(e => Str(e, "kind") == "debit" && gids.Contains(Str(e, "gid")!));
        return (created.Count, charges, before - await scenarios.WalletAsync("alice", ct), answer);
    }

    private static async Task<(int Status, bool Replayed)> PostAsync(HttpClient http, DemoEnvironment env, string key, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["customerId"] = "alice",
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 1 }),
            ["protocol"] = "saga",
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", key);
        using var response = await http.SendAsync(request, ct);
        return ((int)response.StatusCode, response.Headers.TryGetValues("Idempotent-Replayed", out var values) && values.Contains("true"));
    }

    private static async Task<HashSet<string>> OrderIdsAsync(DemoEnvironment env, CancellationToken ct) =>
        [.. (await env.GetJsonAsync(env.OrderUrl + "/orders", ct))["orders"]!.AsArray().Select(o => Str(o, "orderId")!)];
}
