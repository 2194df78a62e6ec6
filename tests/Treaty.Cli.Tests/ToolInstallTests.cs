using System.Diagnostics;
using System.Text.RegularExpressions;
using Treaty.Cli;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// The README's one step to a real <c>treaty</c> command: <c>dotnet pack</c> then
/// <c>dotnet tool install</c>/<c>update</c>, into a temporary tool path and package cache.
/// </summary>
[Collection(ToolInstallCollection.Name)]
public sealed partial class ToolInstallTests
{
    [Fact]
    public async Task PackAndInstall_TreatyHelp_PrintsUsage_AndARepackUpdatesTheTool()
    {
        using var temp = new TempDir("treaty-tool");
        var packages = Path.Combine(temp.Path, "nupkg");
        var tools = Path.Combine(temp.Path, "tools");
        // Install into a private package cache: nothing is left in ~/.nuget/packages, nothing stale is
        // reused. (The pack restores from the usual cache: its dependencies are there already.)
        var environment = new Dictionary<string, string> { ["NUGET_PACKAGES"] = Path.Combine(temp.Path, "nuget-cache") };
        var project = Path.Combine(WorkingDirectoryTests.RepositoryRoot(), "src", "Treaty.Cli");

        // --no-build: `dotnet test` built the CLI in this configuration already; packing it is what is
        // tested here (the README's line builds it first, the same way).
        await DotnetAsync(["pack", project, "-c", Configuration, "--no-build", "-o", packages, "-nologo", "-v", "q"], NoChanges);
        await DotnetAsync(["tool", "install", "Treaty.Cli", "--tool-path", tools, "--source", packages], environment);
        var first = InstalledVersion(await DotnetAsync(["tool", "list", "--tool-path", tools], environment));

        var help = await RunAsync(Path.Combine(tools, OperatingSystem.IsWindows() ? "treaty.exe" : "treaty"), ["--help"], environment);
        help.ExitCode.ShouldBe(0, help.Output);
        help.Output.ShouldContain("treaty [command] [options]", customMessage: help.Output);
        foreach (var command in new[] { "serve", "demo", "tx", "simulate" })
        {
            help.Output.ShouldContain("  " + command + " ", customMessage: help.Output);
        }

        // Pack again (a new version, one second later at least) and update: the new build is installed.
        await Task.Delay(TimeSpan.FromSeconds(1.1));
        await DotnetAsync(["pack", project, "-c", Configuration, "--no-build", "-o", packages, "-nologo", "-v", "q"], NoChanges);
        await DotnetAsync(["tool", "update", "Treaty.Cli", "--tool-path", tools, "--source", packages], environment);
        var second = InstalledVersion(await DotnetAsync(["tool", "list", "--tool-path", tools], environment));

        second.ShouldBeGreaterThan(first);
    }

    private static readonly Dictionary<string, string> NoChanges = [];

#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif

    private static Version InstalledVersion(string toolList)
    {
        var match = ToolListLine().Match(toolList);
        match.Success.ShouldBeTrue(toolList);
        return Version.Parse(match.Groups[1].Value);
    }

    [GeneratedRegex(@"treaty\.cli\s+(\d+\.\d+\.\d+\.\d+)\s+treaty", RegexOptions.IgnoreCase)]
    private static partial Regex ToolListLine();

    private static async Task<string> DotnetAsync(string[] args, IDictionary<string, string> environment)
    {
        var result = await RunAsync(ChildProcess.DotnetHost(), args, environment);
        result.ExitCode.ShouldBe(0, $"dotnet {string.Join(' ', args)}\n{result.Output}");
        return result.Output;
    }

    private static async Task<(int ExitCode, string Output)> RunAsync(string fileName, string[] args, IDictionary<string, string> environment)
    {
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["DOTNET_NOLOGO"] = "1";
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (key, value) in environment)
        {
            info.Environment[key] = value;
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var limit = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{fileName} {string.Join(' ', args)} did not finish in 5 minutes.");
        }

        return (process.ExitCode, await stdout + await stderr);
    }
}

/// <summary>
/// Runs <see cref="ToolInstallTests"/> alone: packing and installing a 37 MB tool beside the demo's
/// timed checks starved them on a small machine (seen twice when the pack still compiled the CLI:
/// a 2PC check of the demo read a wallet before its rollback landed).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ToolInstallCollection
{
    public const string Name = "tool install (alone)";
}
