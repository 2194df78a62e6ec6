using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;

namespace Treaty.AspNetCore.Tests.InDoubt;

public sealed class InDoubtResolverOptionsTests
{
    [Fact]
    public void Defaults_AreTheDocumentedOnes_AndNeedOnlyTheCoordinator()
    {
        var options = new InDoubtResolverOptions();

        options.After.ShouldBe(TimeSpan.FromSeconds(30));
        options.PollInterval.ShouldBe(TimeSpan.FromSeconds(5));
        options.FirstRecheckDelay.ShouldBe(TimeSpan.FromSeconds(5));
        options.MaxRecheckDelay.ShouldBe(TimeSpan.FromMinutes(5));
        options.RequestTimeout.ShouldBe(TimeSpan.FromSeconds(10));
        options.BatchSize.ShouldBe(100);
        options.Validate().ShouldHaveSingleItem().ShouldContain("Coordinator is required");
        new InDoubtResolverOptions { Coordinator = new Uri("http://treaty:5080/") }.Validate().ShouldBeEmpty();
    }

    [Fact]
    public void Validate_RejectsUnusableSettings()
    {
        var coordinator = new Uri("http://treaty:5080/");
        new InDoubtResolverOptions { Coordinator = new Uri("ftp://treaty/") }.Validate().ShouldHaveSingleItem().ShouldContain("http or https");
        new InDoubtResolverOptions { Coordinator = new Uri("/relative", UriKind.Relative) }.Validate().ShouldHaveSingleItem().ShouldContain("absolute");
        new InDoubtResolverOptions { Coordinator = coordinator, After = TimeSpan.Zero }.Validate().ShouldHaveSingleItem().ShouldContain("After");
        new InDoubtResolverOptions { Coordinator = coordinator, PollInterval = TimeSpan.Zero }.Validate().ShouldHaveSingleItem().ShouldContain("PollInterval");
        new InDoubtResolverOptions { Coordinator = coordinator, MaxRecheckDelay = TimeSpan.FromSeconds(1) }.Validate().ShouldHaveSingleItem().ShouldContain("MaxRecheckDelay");
        new InDoubtResolverOptions { Coordinator = coordinator, RequestTimeout = TimeSpan.Zero, BatchSize = 0 }.Validate().Count.ShouldBe(2);
    }

    [Fact]
    public async Task InvalidOptions_FailTheHostAtStart()
    {
        using var dir = new TempDir("in-doubt-options");
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(dir.Path, "p.db")));
        builder.Services.AddTreatyInDoubtResolver(o => o.After = TimeSpan.FromSeconds(10)); // no coordinator
        await using var app = builder.Build();

        var failure = await Should.ThrowAsync<OptionsValidationException>(() => app.StartAsync());

        failure.Message.ShouldContain("Coordinator is required");
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    }
}
