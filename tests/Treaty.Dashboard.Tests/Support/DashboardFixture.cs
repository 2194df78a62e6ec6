using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Treaty.Dashboard.Tests.Support;

/// <summary>A coordinator, a participant and a browser for the tests of one class; all stopped on dispose.</summary>
public class DashboardFixture : IAsyncLifetime
{
    public TestParticipant Participant { get; private set; } = null!;

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public BrowserSession Browser { get; private set; } = null!;

    public HttpClient Http => Coordinator.Http;

    public virtual async Task InitializeAsync()
    {
        Participant = await TestParticipant.StartAsync();
        Coordinator = await StartCoordinatorAsync();
        Browser = await BrowserSession.StartAsync();
    }

    protected virtual Task<InProcessCoordinator> StartCoordinatorAsync() => InProcessCoordinator.StartAsync(prefix: "treaty-dashboard-tests");

    public async Task DisposeAsync()
    {
        // Each in its own try: one failing to stop must not leave the others running.
        try
        {
            if (Browser is not null)
            {
                await Browser.DisposeAsync();
            }
        }
        finally
        {
            try
            {
                if (Coordinator is not null)
                {
                    await Coordinator.DisposeAsync();
                }
            }
            finally
            {
                if (Participant is not null)
                {
                    await Participant.DisposeAsync();
                }
            }
        }
    }

    /// <summary>A branch whose operations call <c>{participant}/{gid}/{name}/{op}</c>.</summary>
    public JsonObject Branch(string gid, string name, string[] ops, string[]? dependsOn = null, JsonObject? retry = null)
    {
        var branch = new JsonObject { ["name"] = name };
        foreach (var op in ops)
        {
            branch[op] = Participant.Url($"{gid}/{name}/{op}");
        }

        if (dependsOn is not null)
        {
            branch["dependsOn"] = new JsonArray([.. dependsOn.Select(d => (JsonNode)JsonValue.Create(d))]);
        }

        if (retry is not null)
        {
            branch["retry"] = retry;
        }

        return branch;
    }

    /// <summary>Submits through the HTTP API, as any client would; waits up to <paramref name="wait"/> for the end.</summary>
    public async Task<JsonObject> SubmitAsync(string protocol, string gid, JsonObject[] branches, string wait = "10s", HttpClient? http = null)
    {
        var body = new JsonObject
        {
            ["gid"] = gid,
            ["protocol"] = protocol,
            ["payload"] = new JsonObject { ["orderId"] = gid, ["amount"] = 42.5, ["items"] = new JsonArray("book", "pen") },
            ["branches"] = new JsonArray([.. branches]),
        };
        using var content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        using var response = await (http ?? Http).PostAsync($"/api/v1/transactions?wait={wait}", content);
        var text = await response.Content.ReadAsStringAsync();
        response.StatusCode.ShouldBeOneOf([HttpStatusCode.OK, HttpStatusCode.Accepted], text);
        return JsonNode.Parse(text)!.AsObject();
    }

    public async Task<JsonObject> GetAsync(string gid, HttpClient? http = null)
    {
        using var response = await (http ?? Http).GetAsync($"/api/v1/transactions/{Uri.EscapeDataString(gid)}");
        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        return (await response.Content.ReadFromJsonAsync<JsonObject>())!;
    }

    /// <summary>Polls the API until <paramref name="done"/> holds (at most 30 s).</summary>
    public async Task<JsonObject> WaitForAsync(string gid, Func<JsonObject, bool> done, string what, HttpClient? http = null)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var tx = await GetAsync(gid, http);
            if (done(tx))
            {
                return tx;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"{gid} never became {what}: {tx.ToJsonString(new JsonSerializerOptions { WriteIndented = true })}");
            }

            await Task.Delay(50);
        }
    }

    public static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 9)];
}
