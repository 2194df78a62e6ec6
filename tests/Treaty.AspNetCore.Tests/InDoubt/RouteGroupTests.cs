using System.Collections.Concurrent;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.Tests.Barrier;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>Branch endpoints in route groups: the vote records the endpoint's name, and the resolver finds its handler by it.</summary>
public sealed class RouteGroupTests
{
    [Fact]
    public async Task TwoGroupsMappingTheSameRelativePattern_WithNames_EachVoteIsResolvedByItsOwnHandler()
    {
        await using var database = TestDatabase.Sqlite("route-groups");
        await using var coordinator = await FakeCoordinator.StartAsync();
        var time = new ManualTimeProvider();
        var runs = new ConcurrentQueue<string>();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddSingleton(database.Database);
        builder.Services.AddSingleton<TimeProvider>(time);
        builder.Services.AddTreatyInDoubtResolver(o =>
        {
            o.Coordinator = coordinator.BaseAddress;
            o.PollInterval = TimeSpan.FromHours(1);
        });
        await using var app = builder.Build();
        foreach (var service in new[] { "payment", "stock" })
        {
            app.MapGroup("/" + service).MapTreatyBranch("/{op}", (ctx, _) =>
            {
                runs.Enqueue($"{service}:{ctx.Op}");
                return Task.FromResult(ctx.Ok());
            }, name: service);
        }

        await app.StartAsync();
        await app.Services.GetRequiredService<InDoubtResolver>().FirstPass;
        using var http = new HttpClient { BaseAddress = new Uri(app.Urls.Single()) };
        using var vote = await http.PostAsync("/stock/prepare", new StringContent("""{"gid":"g-groups","branch":"b1","op":"prepare","payload":{}}""", Encoding.UTF8, "application/json"));
        vote.EnsureSuccessStatusCode();

        time.Advance(TimeSpan.FromSeconds(30));
        var resolution = (await app.Services.GetRequiredService<InDoubtResolver>().ResolveDueAsync(CancellationToken.None)).ShouldHaveSingleItem();

        resolution.Result.ShouldBe(InDoubtResult.Resolved); // unknown gid: presumed abort
        runs.ShouldBe(["stock:prepare", "stock:rollback"]);
        await app.StopAsync();
    }

    [Fact]
    public void TwoGroupsMappingTheSameRelativePattern_WithoutNames_FailAtStartupSayingWhy()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddSingleton<Data.ParticipantDatabase>(new Data.SqliteParticipantDatabase(Path.Combine(Path.GetTempPath(), "unused.db")));
        builder.Services.AddTreatyBarrier();
        using var app = builder.Build();
        app.MapGroup("/payment").MapTreatyBranch("/{op}", (ctx, _) => Task.FromResult(ctx.Ok()));

        Should.Throw<InvalidOperationException>(() => app.MapGroup("/stock").MapTreatyBranch("/{op}", (ctx, _) => Task.FromResult(ctx.Ok())))
            .Message.ShouldContain("name");
    }
}
