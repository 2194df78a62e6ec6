using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.Server.Tests.Support;

/// <summary>Raw-HTTP helpers over the coordinator's /api/v1.</summary>
public static class Api
{
    public const string Transactions = "/api/v1/transactions";

    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>The payload most tests submit (see <see cref="PayloadNode"/>).</summary>
    public static readonly JsonElement Payload = JsonSerializer.SerializeToElement(PayloadNode(), Json.Indented);

    /// <summary>A small order-like payload, as a fresh node.</summary>
    public static JsonObject PayloadNode() => new() { ["orderId"] = "o-1", ["amount"] = 25.5 };

    /// <summary>A gid unique to this run, readable in failures.</summary>
    public static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    public static async Task<HttpResponseMessage> PostAsync(HttpClient http, string path, string body, string? contentType = "application/json")
    {
        var content = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
        if (contentType is not null)
        {
            content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        }

        // A body the server will refuse for its size goes out as curl sends one: after
        // "Expect: 100-continue", so the 413 arrives before the body and the server's closing
        // the connection cannot break the client's write (a "Broken pipe" race, seen once in CI).
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        request.Headers.ExpectContinue = content.Headers.ContentLength > 64 * 1024;
        return await http.SendAsync(request);
    }

    public static Task<HttpResponseMessage> SubmitAsync(HttpClient http, JsonObject body, string query = "") =>
        PostAsync(http, Transactions + query, body.ToJsonString());

    public static async Task<TransactionView> ReadViewAsync(HttpResponseMessage response)
    {
        var view = await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.TransactionView);
        return view.ShouldNotBeNull();
    }

    /// <summary>Asserts the response is problem+json with <paramref name="status"/> and returns the problem.</summary>
    public static async Task<ProblemView> ReadProblemAsync(HttpResponseMessage response, HttpStatusCode status)
    {
        var text = await response.Content.ReadAsStringAsync();
        response.StatusCode.ShouldBe(status, text);
        response.Content.Headers.ContentType?.MediaType.ShouldBe("application/problem+json", text);
        var problem = System.Text.Json.JsonSerializer.Deserialize(text, TreatyJsonContext.Default.ProblemView).ShouldNotBeNull();
        problem.Status.ShouldBe((int)status);
        problem.Type.ShouldStartWith("https://treaty.dev/problems/");
        problem.Title.ShouldNotBeNullOrWhiteSpace();
        return problem;
    }

    public static async Task<TransactionView?> GetAsync(HttpClient http, string gid)
    {
        using var response = await http.GetAsync($"{Transactions}/{Uri.EscapeDataString(gid)}");
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }

        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        return await ReadViewAsync(response);
    }

    public static async Task<EventListView> EventsAsync(HttpClient http, string gid)
    {
        using var response = await http.GetAsync($"{Transactions}/{Uri.EscapeDataString(gid)}/events");
        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        var events = await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.EventListView);
        return events.ShouldNotBeNull();
    }

    public static async Task<TransactionListView> ListAsync(HttpClient http, string query = "?limit=500")
    {
        using var response = await http.GetAsync(Transactions + query);
        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        var list = await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.TransactionListView);
        return list.ShouldNotBeNull();
    }

    /// <summary>Polls GET until <paramref name="done"/> holds; fails with the last state after <see cref="Patience"/>.</summary>
    public static Task<TransactionView> WaitUntilAsync(HttpClient http, string gid, Func<TransactionView, bool> done, string what, TimeSpan? timeout = null) =>
        Eventually.Async(async () => await GetAsync(http, gid), v => v is not null && done(v), $"{gid}: {what}", timeout)!;

    public static Task<TransactionView> WaitForStatusAsync(HttpClient http, string gid, string status, TimeSpan? timeout = null) =>
        WaitUntilAsync(http, gid, v => v.Status == status, $"status {status}", timeout);

    public static OperationView Op(this TransactionView view, string branch, string op) =>
        view.Branches.Single(b => b.Name == branch).Ops[op];

    public static BranchView Branch(this TransactionView view, string branch) =>
        view.Branches.Single(b => b.Name == branch);
}

/// <summary>Bounded polling: no fixed sleeps, a clear failure message with the last observation.</summary>
public static class Eventually
{
    public static async Task<T> Async<T>(Func<Task<T>> probe, Func<T, bool> done, string what, TimeSpan? timeout = null)
    {
        var limit = timeout ?? Api.Patience;
        var clock = Stopwatch.StartNew();
        var last = default(T);
        Exception? lastError = null;
        while (true)
        {
            try
            {
                last = await probe();
                lastError = null;
                if (done(last))
                {
                    return last;
                }
            }
            catch (HttpRequestException ex)
            {
                lastError = ex; // a coordinator that is (re)starting
            }

            if (clock.Elapsed > limit)
            {
                var seen = last is null ? "nothing" : System.Text.Json.JsonSerializer.Serialize(last, last.GetType(), Json.Indented);
                throw new TimeoutException($"Not reached within {limit.TotalSeconds:0} s: {what}. Last seen: {seen} {lastError?.Message}");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50));
        }
    }

    public static Task Until(Func<bool> condition, string what, TimeSpan? timeout = null) =>
        Async(() => Task.FromResult(condition()), ok => ok, what, timeout);
}

/// <summary>Building submit bodies as JSON, so tests can also send what the SDK never would.</summary>
public static class Json
{
    public static readonly System.Text.Json.JsonSerializerOptions Indented = new(System.Text.Json.JsonSerializerDefaults.Web) { WriteIndented = true };

    public static JsonObject Saga(string? gid, JsonNode? payload, params JsonObject[] branches)
    {
        var body = new JsonObject { ["protocol"] = "saga" };
        if (gid is not null)
        {
            body["gid"] = gid;
        }

        body["payload"] = payload;
        body["branches"] = new JsonArray([.. branches]);
        return body;
    }

    public static JsonObject Step(
        string name,
        string action,
        string? compensate = null,
        string[]? dependsOn = null,
        bool pivot = false,
        JsonObject? retry = null,
        long? timeoutMs = null)
    {
        var step = new JsonObject { ["name"] = name, ["action"] = action };
        if (compensate is not null)
        {
            step["compensate"] = compensate;
        }

        if (dependsOn is not null)
        {
            step["dependsOn"] = new JsonArray([.. dependsOn.Select(d => (JsonNode)JsonValue.Create(d))]);
        }

        if (pivot)
        {
            step["pivot"] = true;
        }

        if (retry is not null)
        {
            step["retry"] = retry;
        }

        if (timeoutMs is not null)
        {
            step["timeoutMs"] = timeoutMs;
        }

        return step;
    }

    /// <summary>A transaction of any protocol; <paramref name="extra"/> adds top-level fields (queryPrepared, timeoutMs, retry).</summary>
    public static JsonObject Transaction(string protocol, string gid, JsonObject[] branches, JsonObject? extra = null)
    {
        var body = new JsonObject { ["protocol"] = protocol, ["gid"] = gid, ["payload"] = Api.PayloadNode(), ["branches"] = new JsonArray([.. branches]) };
        foreach (var (name, value) in extra ?? [])
        {
            body[name] = value?.DeepClone();
        }

        return body;
    }

    /// <summary>A branch whose every operation in <paramref name="ops"/> points at <c>{baseUrl}/{op}</c>.</summary>
    public static JsonObject Branch(string name, string baseUrl, string[] ops, JsonObject? retry = null, long? timeoutMs = null)
    {
        var branch = new JsonObject { ["name"] = name };
        foreach (var op in ops)
        {
            branch[op] = $"{baseUrl}/{op}";
        }

        if (retry is not null)
        {
            branch["retry"] = retry.DeepClone();
        }

        if (timeoutMs is not null)
        {
            branch["timeoutMs"] = timeoutMs;
        }

        return branch;
    }

    public static JsonObject Retry(int maxAttempts, long initialDelayMs, long maxDelayMs) => new()
    {
        ["maxAttempts"] = maxAttempts,
        ["initialDelayMs"] = initialDelayMs,
        ["maxDelayMs"] = maxDelayMs,
    };
}
