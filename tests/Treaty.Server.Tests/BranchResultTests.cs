using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>What the coordinator keeps of a participant's 2xx answer as the branch result.</summary>
public sealed class BranchResultTests : IAsyncLifetime
{
    private WebApplication _participant = null!;
    private InProcessCoordinator _coordinator = null!;
    private string _base = null!;

    public async Task InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        _participant = builder.Build();
        // Written through the response stream without a length: chunked, like most JSON APIs answer.
        _participant.MapPost("/chunked", async (HttpContext context) =>
        {
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync("{\"reserved\":3,\"note\":\"chunked\"");
            await context.Response.Body.FlushAsync();
            await context.Response.WriteAsync("}");
        });
        _participant.MapPost("/text", () => Results.Text("done", "text/plain"));
        _participant.MapPost("/big", () => Results.Text(JsonSerializer.Serialize(new string('x', 100_000)), "application/json"));
        _participant.MapPost("/empty", () => Results.Ok());
        await _participant.StartAsync();
        _base = _participant.Urls.Single();
        _coordinator = await InProcessCoordinator.StartAsync();
    }

    public async Task DisposeAsync()
    {
        await _coordinator.DisposeAsync();
        await _participant.DisposeAsync();
    }

    [Fact]
    public async Task Results_AreKeptAsJson_ExceptWhenOverTheLimit_AndTheSagaCommitsEitherWay()
    {
        var gid = Api.NewGid("results");
        var response = await Api.SubmitAsync(_coordinator.Http, Json.Saga(gid, Api.PayloadNode(),
            Json.Step("chunked", $"{_base}/chunked", $"{_base}/empty"),
            Json.Step("text", $"{_base}/text", $"{_base}/empty"),
            Json.Step("big", $"{_base}/big", $"{_base}/empty"),
            Json.Step("empty", $"{_base}/empty", $"{_base}/empty")), "?wait=10s");

        var view = await Api.ReadViewAsync(response);

        view.Status.ShouldBe("committed");
        var chunked = view.Op("chunked", "action").Result.ShouldNotBeNull();
        chunked.GetProperty("reserved").GetInt32().ShouldBe(3);
        chunked.GetProperty("note").GetString().ShouldBe("chunked");
        view.Op("text", "action").Result.ShouldNotBeNull().GetString().ShouldBe("done"); // not JSON: kept as a JSON string
        view.Op("big", "action").Status.ShouldBe("succeeded");
        // Over the stored-body cap (16 KiB by default): the outcome counts, a note replaces the body.
        var note = view.Op("big", "action").Result.ShouldNotBeNull();
        note.GetProperty("truncated").GetBoolean().ShouldBeTrue();
        note.GetProperty("limit").GetInt32().ShouldBe(16 * 1024);
        view.Op("empty", "action").Result.ShouldBeNull();
    }
}
